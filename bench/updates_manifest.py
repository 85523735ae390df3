"""Benchmark: the Expo Updates manifest endpoint of a real `shipyard serve` (SQLite), with
code signing on and a staged rollout active, against a minimal ASGI app serving a fixed
response of the same size, measured in the same run with the same load generator.

    python bench/updates_manifest.py [--quick] [--seconds 15] [--connections 32]

Load: wrk (Debian package) with a Lua script that sends the headers expo-updates sends,
a random EAS-Client-ID per request (so rollout bucketing runs on every request) and
`expo-expect-signature`. The server is pinned to CPU 0 and wrk to CPU 1 when there are two.
Also measures asset downloads (the launch bundle, brotli as Android's OkHttp asks for it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.updates.helpers import expo_headers, make_export, parse_multipart  # noqa: E402

LUA_MANIFEST = r"""
local path = "%(path)s"
local random = math.random
local function uuid4()
  return string.format("%%08x-%%04x-4%%03x-%%04x-%%012x",
    random(0, 0xffffffff), random(0, 0xffff), random(0, 0xfff), random(0x8000, 0xbfff), random(0, 0xffffffffffff))
end
local base = {
  ["Accept"] = "multipart/mixed,application/expo+json,application/json",
  ["Expo-Platform"] = "ios",
  ["Expo-Protocol-Version"] = "1",
  ["Expo-API-Version"] = "1",
  ["Expo-Updates-Environment"] = "BARE",
  ["Expo-JSON-Error"] = "true",
  ["Expo-Runtime-Version"] = "1.0.0",
  ["expo-channel-name"] = "production",
  ["Expo-Embedded-Update-ID"] = "%(embedded)s",
  ["Expo-Current-Update-ID"] = "%(current)s",
  ["expo-expect-signature"] = 'sig, keyid="main", alg="rsa-v1_5-sha256"',
}
local counter = 0
setup = function(thread) counter = counter + 1; thread:set("seed", os.time() + counter) end
init = function(args) math.randomseed(seed or os.time()) end
request = function()
  local h = {}
  for k, v in pairs(base) do h[k] = v end
  h["EAS-Client-ID"] = uuid4()
  return wrk.format("GET", path, h)
end
%(done)s
"""

LUA_PLAIN = r"""
local path = "%(path)s"
local headers = %(headers)s
request = function() return wrk.format("GET", path, headers) end
%(done)s
"""

LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  local errors = e.status + e.connect + e.read + e.write + e.timeout
  local fmt = "RESULT {\"requests\": %d, \"seconds\": %.3f, \"bytes\": %d, \"errors\": %d, "
    .. "\"p50_ms\": %.3f, \"p95_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f}\n"
  io.write(string.format(fmt, summary.requests, summary.duration / 1e6, summary.bytes, errors,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""

BASELINE_APP = """
import os
BODY = open(os.environ["BENCH_BODY"], "rb").read()
HEADERS = [(b"content-type", os.environ["BENCH_CT"].encode()), (b"content-length", str(len(BODY)).encode()),
           (b"expo-protocol-version", b"1"), (b"expo-sfv-version", b"0"), (b"cache-control", b"private, max-age=0")]

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else []


def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): CPU per response is the
    figure that survives a noisy machine, unlike wall-clock latency."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, script: str, seconds: int, connections: int, workdir: Path, name: str) -> dict[str, Any]:
    lua = workdir / f"{name}.lua"
    lua.write_text(script)
    cmd = [*pin(1), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(lua), url]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    out = done.stdout
    match = re.search(r"RESULT (\{.*\})", out)
    if not match:
        raise SystemExit("wrk printed no result:\n" + out)
    result = json.loads(match.group(1))
    result["rps"] = result["requests"] / result["seconds"]
    result["mb_per_s"] = result["bytes"] / result["seconds"] / 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    parser.add_argument("--quick", action="store_true", help="3-second runs: a smoke test, not a measurement")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 3
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "SHIPYARD_DATA_DIR": str(work / "data"),
        "SHIPYARD_PUBLIC_URL": url,
        "SHIPYARD_PORT": str(port),
        "SHIPYARD_SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "SHIPYARD_LOG_LEVEL": "WARNING",
        "SHIPYARD_RATE_LIMIT_PER_IP": "100000000/minute",
        "SHIPYARD_RATE_LIMIT_PER_KEY": "100000000/minute",
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        creds = json.loads(
            subprocess.run(
                [sys.executable, "-m", "shipyard.cli", "init", "--json"], env=env, capture_output=True, check=True
            ).stdout
        )
        slug = creds["project_slug"]
        cli_env = {**env, "SHIPYARD_URL": url, "SHIPYARD_KEY": creds["secret_key"]}
        subprocess.run(
            [sys.executable, "-m", "shipyard.cli", "updates", "signing", "generate", "-p", slug],
            env=cli_env,
            capture_output=True,
            check=True,
        )
        server = subprocess.Popen(
            [*pin(0), sys.executable, "-m", "shipyard.cli", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(server)
        wait_up(url + "/healthz", server)
        for label, extra in (("v1", []), ("v2", ["--rollout", "10"])):
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "shipyard.cli",
                    "updates",
                    "publish",
                    str(make_export(work, label)),
                    "-p",
                    slug,
                    "-c",
                    "production",
                    "-m",
                    label,
                    *extra,
                ],
                env=cli_env,
                capture_output=True,
                check=True,
            )
        # One request as the app makes it: the body the baseline will serve, and the ids.
        probe = httpx.get(creds["manifest_url"], headers=expo_headers(keyid="main", client_id=str(uuid.uuid4())))
        probe.raise_for_status()
        manifest = json.loads(parse_multipart(probe)["manifest"].body)
        assert "expo-signature" in parse_multipart(probe)["manifest"].headers
        embedded = str(uuid.uuid4())
        path = f"/updates/{creds['project_id']}/manifest"
        # Devices run their embedded update: 10 % are in the rollout and get v2's signed manifest,
        # the others the control (v1's); both are full manifests, the heavier answer.
        script = LUA_MANIFEST % {
            "path": path,
            "embedded": embedded,
            "current": embedded,
            "done": LUA_DONE,
        }
        warm = run_wrk(url + path, script, 2, args.connections, work, "warm")
        cpu_before = cpu_seconds(server.pid)
        shipyard_result = run_wrk(url + path, script, args.seconds, args.connections, work, "manifest")
        shipyard_result["cpu_us_per_response"] = (
            (cpu_seconds(server.pid) - cpu_before) / shipyard_result["requests"] * 1e6
        )
        launch = manifest["launchAsset"]["url"]
        asset_headers = '{["Accept-Encoding"] = "br, gzip", ["Accept"] = "application/javascript"}'
        asset_script = LUA_PLAIN % {
            "path": httpx.URL(launch).raw_path.decode(),
            "headers": asset_headers,
            "done": LUA_DONE,
        }
        asset_result = run_wrk(url, asset_script, max(5, args.seconds // 3), args.connections, work, "asset")
        bundle_size = len(httpx.get(launch, headers={"Accept-Encoding": "identity"}).content)
        server.terminate()
        server.wait(timeout=30)

        # Baseline: the same bytes from a do-nothing ASGI app under the same uvicorn settings.
        body_file = work / "body.bin"
        body_file.write_bytes(probe.content)
        (work / "baseline_app.py").write_text(textwrap.dedent(BASELINE_APP))
        base_port = free_port()
        baseline = subprocess.Popen(
            [
                *pin(0),
                sys.executable,
                "-m",
                "uvicorn",
                "baseline_app:app",
                "--port",
                str(base_port),
                "--log-level",
                "warning",
                "--no-server-header",
            ],
            cwd=work,
            env={**env, "BENCH_BODY": str(body_file), "BENCH_CT": probe.headers["content-type"]},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(baseline)
        base_url = f"http://127.0.0.1:{base_port}"
        wait_up(base_url + path, baseline)
        run_wrk(base_url + path, script, 2, args.connections, work, "warm-base")
        cpu_before = cpu_seconds(baseline.pid)
        baseline_result = run_wrk(base_url + path, script, args.seconds, args.connections, work, "baseline")
        baseline_result["cpu_us_per_response"] = (
            (cpu_seconds(baseline.pid) - cpu_before) / baseline_result["requests"] * 1e6
        )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    results = {
        "connections": args.connections,
        "seconds": args.seconds,
        "manifest": shipyard_result,
        "baseline": baseline_result,
        "asset": {**asset_result, "bundle_bytes": bundle_size},
        "warmup_rps": warm["rps"],
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"manifest endpoint, {args.connections} connections, {args.seconds} s, signing on, 10 % rollout active,"
        " random EAS-Client-ID per request"
    )
    print(f"{'':<34}{'req/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}{'CPU µs/resp':>13}")
    for name, r in (
        ("shipyard GET /updates/…/manifest", shipyard_result),
        ("baseline fixed-response ASGI", baseline_result),
    ):
        print(
            f"{name:<34}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>8}"
            f"{r['cpu_us_per_response']:>13.0f}"
        )
    print(f"ratio shipyard/baseline: {shipyard_result['rps'] / baseline_result['rps']:.2f}")
    a = results["asset"]
    print(
        f"asset download (launch bundle {a['bundle_bytes']} B, brotli): {a['rps']:.0f} req/s, "
        f"{a['mb_per_s']:.1f} MB/s on the wire, p99 {a['p99_ms']:.2f} ms, errors {a['errors']}"
    )


if __name__ == "__main__":
    main()
