"""Benchmark: Sentry envelope ingest of a real `shipyard serve`, next to a minimal ASGI app
that accepts and discards the same request, measured in the same run.

    python bench/errors_ingest.py [--quick] [--seconds 15] [--connections 32] [--postgres URL]

The envelope is what @sentry/react-native sends for a crash: an error event with a 15-frame
stack trace (mixed in-app and library frames), 20 breadcrumbs, device/os/app/ota_updates
contexts, tags, user and SDK info; about 8 KB. Every request carries a fresh event id (wrk's
Lua script writes one into the envelope header and the payload), and the stacks come from 16
different in-app call paths, so the digester creates 16 issues and groups every event into one.

Figures:
* accepted events/s — 200 answers per second; a 200 means the envelope is committed to the
  database (group commit), the same guarantee the SDK gets in production;
* p50/p95/p99 latency of those answers;
* grouped events/s — events the digester turned into issues (scrubbed, normalised, grouped,
  counted), (a) during the load, in the same process, and (b) draining the backlog afterwards
  with no ingest running;
* the baseline: a do-nothing ASGI app under the same uvicorn reading the same body and
  answering ``{"id": …}``;
* CPU time per event (user + system, all threads, read from /proc): the server's per accepted
  event during the load, and all Shipyard processes' (server + worker) per grouped event over
  the load and the drain. Unlike events/s, these hardly move with the machine's load (the
  PostgreSQL server's own CPU is not counted).

The server is pinned to CPU 0 and wrk to CPU 1 when there are two.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.updates_manifest import LUA_DONE, free_port, pin, run_wrk, wait_up  # noqa: E402

PLACEHOLDER = "feedfacefeedfacefeedfacefeedface"  # 32 hex characters, replaced per request
PATHS = 16

LUA_ENVELOPE = r"""
local path = "%(path)s"
local bodies = {}
%(bodies)s
local headers = {
  ["Content-Type"] = "application/x-sentry-envelope",
  ["X-Sentry-Auth"] = "Sentry sentry_version=7, sentry_client=sentry.javascript.react-native/6.14.0, "
    .. "sentry_key=%(key)s",
  ["User-Agent"] = "sentry.javascript.react-native/6.14.0",
}
local counter = 0
setup = function(thread) counter = counter + 1; thread:set("seed", os.time() * 100 + counter) end
init = function(args) math.randomseed(seed or os.time()) end
local random = math.random
request = function()
  local id = string.format("%%08x%%08x%%08x%%08x", random(0, 0x7fffffff), random(0, 0x7fffffff),
    random(0, 0x7fffffff), random(0, 0x7fffffff))
  local body = string.gsub(bodies[random(1, #bodies)], "%(placeholder)s", id)
  return wrk.format("POST", path, headers, body)
end
%(done)s
"""

BASELINE_APP = """
import json

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    header = json.loads(body[: body.index(b"\\n")])
    answer = json.dumps({"id": header.get("event_id")}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})
"""

LIBRARY_FRAMES = [
    ("node_modules/react-native/Libraries/Core/Timers/JSTimers.js", "callTimers", "JSTimers"),
    ("node_modules/react-native/Libraries/BatchedBridge/MessageQueue.js", "__callFunction", "MessageQueue"),
    ("node_modules/react-native/Libraries/BatchedBridge/MessageQueue.js", "__guard", "MessageQueue"),
    ("node_modules/react/cjs/react.production.min.js", "dispatchEvent", "react"),
    (
        "node_modules/react-native/Libraries/Renderer/implementations/ReactNativeRenderer-prod.js",
        "batchedUpdates",
        "rn",
    ),
    ("node_modules/@react-navigation/core/src/BaseNavigationContainer.tsx", "dispatch", "navigation"),
    ("node_modules/@tanstack/query-core/build/lib/query.js", "fetch", "query"),
    ("node_modules/promise/setimmediate/core.js", "tryCallOne", "promise"),
]


def make_event(path_no: int) -> dict[str, Any]:
    """A crash as @sentry/react-native reports it; ``path_no`` picks the in-app call path."""
    rnd = random.Random(path_no)
    frames = []
    for i in range(15):
        if i % 2 == 0 and i < 8:
            filename, function, module = LIBRARY_FRAMES[(i + path_no) % len(LIBRARY_FRAMES)]
            in_app = False
        else:
            filename = f"app:///src/screens/Screen{path_no}/part{i}.tsx"
            function = f"handle{['Press', 'Load', 'Submit', 'Sync', 'Render'][i % 5]}{path_no}_{i}"
            module = None
            in_app = True
        frames.append(
            {
                "filename": filename,
                "abs_path": f"app:///{filename}" if not filename.startswith("app:") else filename,
                "function": function,
                **({"module": module} if module else {}),
                "lineno": rnd.randint(1, 2000),
                "colno": rnd.randint(1, 120),
                "in_app": in_app,
                "platform": "javascript",
                "context_line": f"    const result = await {function}(state, props.{function[:8]});",
            }
        )
    breadcrumbs = [
        {
            "timestamp": time.time() - 60 + i,
            "type": ["navigation", "http", "default", "ui"][i % 4],
            "category": ["navigation", "fetch", "console", "touch"][i % 4],
            "level": "info",
            "message": f"GET https://api.example.com/v1/items/{1000 + i} [200]",
            **(
                {"data": {"url": f"https://api.example.com/v1/items/{1000 + i}", "status_code": 200}}
                if i % 4 == 1
                else {}
            ),
        }
        for i in range(20)
    ]
    update_id = "0f8e7d6c-5b4a-4321-9876-543210fedcba"
    return {
        "event_id": PLACEHOLDER,
        "timestamp": time.time(),
        "platform": "javascript",
        "level": "fatal",
        "logger": "javascript",
        "release": "com.example.app@2.4.1+241",
        "dist": "241",
        "environment": "production",
        "tags": {
            "expo.updates.update_id": update_id,
            "expo.updates.channel": "production",
            "expo.updates.runtime_version": "2.4.0",
            "event.origin": "javascript",
            "event.environment": "javascript",
        },
        "user": {"id": f"user-{path_no}", "ip_address": "{{auto}}"},
        "exception": {
            "values": [
                {
                    "type": "TypeError",
                    "value": f"Cannot read property 'items' of undefined (screen {path_no})",
                    "mechanism": {"type": "onerror", "handled": False},
                    "stacktrace": {"frames": frames},
                }
            ]
        },
        "breadcrumbs": {"values": breadcrumbs},
        "contexts": {
            "device": {
                "family": "iOS",
                "model": "iPhone15,2",
                "model_id": "D73AP",
                "arch": "arm64e",
                "memory_size": 6_000_000_000,
                "free_memory": 400_000_000,
                "simulator": False,
                "boot_time": "2030-01-01T00:00:00Z",
                "screen_density": 3,
                "manufacturer": "Apple",
            },
            "os": {"name": "iOS", "version": "17.5.1", "build": "21F90", "kernel_version": "Darwin Kernel 23.5.0"},
            "app": {
                "app_identifier": "com.example.app",
                "app_name": "Example",
                "app_version": "2.4.1",
                "app_build": "241",
                "app_start_time": "2030-01-01T00:00:00Z",
                "in_foreground": True,
            },
            "ota_updates": {
                "update_id": update_id,
                "channel": "production",
                "runtime_version": "2.4.0",
                "is_enabled": True,
                "is_embedded_launch": False,
                "is_emergency_launch": False,
                "launch_duration": 412,
            },
            "react_native_context": {"js_engine": "hermes", "turbo_module": True, "fabric": True, "expo": True},
        },
        "sdk": {
            "name": "sentry.javascript.react-native",
            "version": "6.14.0",
            "integrations": ["ReactNativeErrorHandlers", "Release", "ExpoContext", "DeviceContext"],
            "packages": [{"name": "npm:@sentry/react-native", "version": "6.14.0"}],
        },
    }


def make_envelope(path_no: int, dsn: str) -> bytes:
    payload = orjson.dumps(make_event(path_no))
    header = orjson.dumps(
        {
            "event_id": PLACEHOLDER,
            "sent_at": "2030-01-01T00:00:00Z",
            "dsn": dsn,
            "sdk": {"name": "sentry.javascript.react-native", "version": "6.14.0"},
        }
    )
    item = orjson.dumps({"type": "event", "length": len(payload)})
    return header + b"\n" + item + b"\n" + payload + b"\n"


def lua_bodies(bodies: list[bytes]) -> str:
    # Long brackets keep the bytes as they are (no escapes to translate between JSON and Lua).
    assert all(b"]==]" not in b for b in bodies)
    return "\n".join(f"bodies[{i + 1}] = [==[{b.decode()}]==]" for i, b in enumerate(bodies))


def cpu_seconds(proc: subprocess.Popen[bytes] | None) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc."""
    if proc is None:
        return 0.0
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Api:
    def __init__(self, url: str, project_id: int, secret: str) -> None:
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=30)
        self.base = f"/api/v1/projects/{project_id}/errors"

    def pending(self) -> int:
        return int(self.client.get(self.base + "/ingest").json()["pending"])

    def grouped(self) -> tuple[int, int]:
        """(events counted on issues, number of issues)."""
        total = issues = 0
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 200}
            if cursor:
                params["cursor"] = cursor
            page = self.client.get(self.base + "/issues", params=params).json()
            total += sum(int(i["count"]) for i in page["data"])
            issues += len(page["data"])
            cursor = page.get("next_cursor")
            if not cursor:
                return total, issues


def bench_shipyard(args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**env, "SHIPYARD_PUBLIC_URL": url, "SHIPYARD_PORT": str(port)}
    creds = json.loads(
        subprocess.run(
            [sys.executable, "-m", "shipyard.cli", "init", "--json"], env=env, capture_output=True, check=True
        ).stdout
    )
    profiler = (
        [shutil.which("py-spy") or "py-spy", "record", "--format", "raw", "-r", "200", "-o", args.profile, "--"]
        if args.profile
        else []
    )
    server = subprocess.Popen(
        [*pin(0), *profiler, sys.executable, "-m", "shipyard.cli", "serve", *(["--no-worker"] if args.worker else [])],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "server.log", "ab"),  # noqa: SIM115
    )
    worker = None
    if args.worker:  # the digester in its own process (`shipyard worker`), as a scaled-out install runs it
        worker = subprocess.Popen(
            [sys.executable, "-m", "shipyard.cli", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "worker.log", "ab"),  # noqa: SIM115
        )
    try:
        wait_up(url + "/healthz", server)
        project_id = int(creds["project_id"])
        bodies = [make_envelope(n, creds["dsn"]) for n in range(PATHS)]
        path = f"/api/{project_id}/envelope/"
        script = LUA_ENVELOPE % {
            "path": path,
            "bodies": lua_bodies(bodies),
            "key": creds["public_key"],
            "placeholder": PLACEHOLDER,
            "done": LUA_DONE,
        }
        api = Api(url, project_id, creds["secret_key"])
        # One request checked by hand: it is accepted and becomes an issue.
        probe = httpx.post(
            url + path,
            content=bodies[0].replace(PLACEHOLDER.encode(), uuid.uuid4().hex.encode()),
            headers={
                "Content-Type": "application/x-sentry-envelope",
                "X-Sentry-Auth": f"Sentry sentry_version=7, sentry_key={creds['public_key']}",
            },
        )
        probe.raise_for_status()
        warm = run_wrk(url + path, script, 2, args.connections, work, "warm")
        drain_deadline = time.monotonic() + 300
        while api.pending() and time.monotonic() < drain_deadline:
            time.sleep(0.5)
        grouped_before, _ = api.grouped()
        measured = None if args.profile else server  # under py-spy, server.pid is py-spy's
        cpu_server, cpu_worker = cpu_seconds(measured), cpu_seconds(worker)
        started = time.monotonic()
        result = run_wrk(url + path, script, args.seconds, args.connections, work, "ingest")
        load_seconds = time.monotonic() - started
        load_cpu_server = cpu_seconds(measured) - cpu_server
        grouped_at_end, _ = api.grouped()
        backlog = api.pending()
        drain_started = time.monotonic()
        while True:
            pending = api.pending()
            if not pending or time.monotonic() - drain_started > 600:
                break
            time.sleep(0.25)
        drain_seconds = time.monotonic() - drain_started
        total_cpu = cpu_seconds(measured) + cpu_seconds(worker) - cpu_server - cpu_worker
        grouped_final, issue_count = api.grouped()
        failed = api.client.get(api.base + "/ingest").json()["failed"]
    finally:
        server.send_signal(signal.SIGINT)  # py-spy writes its profile when the program ends
        server.wait(timeout=60)
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
    accepted = result["requests"] - result["errors"]
    grouped_during = grouped_at_end - grouped_before
    grouped_total = grouped_final - grouped_before
    return {
        "wrk": result,
        "warmup_rps": warm["rps"],
        "accepted": accepted,
        "accepted_per_s": accepted / result["seconds"],
        "bytes_per_envelope": sum(len(b) for b in bodies) // len(bodies),
        "grouped_during_load_per_s": grouped_during / load_seconds,
        "backlog_at_end": backlog,
        "drain_seconds": drain_seconds,
        "grouped_drain_per_s": (grouped_total - grouped_during) / drain_seconds if drain_seconds > 0.5 else None,
        "grouped_overall_per_s": grouped_total / (load_seconds + drain_seconds),
        "grouped_total": grouped_total,
        "issues": issue_count,
        "failed_envelopes": failed,
        # CPU time per event: robust where wall-clock rates are not (a shared, loaded machine).
        # Not measured (0) for the server with --profile.
        "server_cpu_ms_per_accepted": 1000 * load_cpu_server / max(accepted, 1),
        "cpu_ms_per_grouped": 1000 * total_cpu / max(grouped_total, 1),
        # Every 200 so far (probe, warm-up, measured run) against the events on issues at the end.
        "lost": 1 + (warm["requests"] - warm["errors"]) + accepted - grouped_final,
    }


def bench_baseline(args: argparse.Namespace, work: Path, env: dict[str, str], bodies: list[bytes]) -> dict[str, Any]:
    (work / "baseline_app.py").write_text(textwrap.dedent(BASELINE_APP))
    port = free_port()
    proc = subprocess.Popen(
        [
            *pin(0),
            sys.executable,
            "-m",
            "uvicorn",
            "baseline_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-server-header",
            "--no-access-log",
        ],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_up(url + "/", proc)
        path = "/api/1/envelope/"
        script = LUA_ENVELOPE % {
            "path": path,
            "bodies": lua_bodies(bodies),
            "key": "k",
            "placeholder": PLACEHOLDER,
            "done": LUA_DONE,
        }
        run_wrk(url + path, script, 2, args.connections, work, "warm-base")
        cpu = cpu_seconds(proc)
        result = run_wrk(url + path, script, args.seconds, args.connections, work, "baseline")
        result["cpu_ms_per_request"] = 1000 * (cpu_seconds(proc) - cpu) / max(result["requests"], 1)
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="5 s runs (a smoke test of the benchmark)")
    parser.add_argument("--postgres", metavar="URL", help="run Shipyard on this (empty) PostgreSQL database")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    parser.add_argument(
        "--worker", action="store_true", help="digest in a separate `shipyard worker` process (serve --no-worker)"
    )
    parser.add_argument("--profile", metavar="FILE", help="record the server with py-spy (raw collapsed stacks)")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 5
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-errors-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "SHIPYARD_DATA_DIR": str(work / "data"),
        "SHIPYARD_SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "SHIPYARD_LOG_LEVEL": "WARNING",
        "SHIPYARD_RATE_LIMIT_PER_IP": "100000000/minute",
        "SHIPYARD_RATE_LIMIT_PER_KEY": "100000000/minute",
        "SHIPYARD_ERRORS_EVENTS_PER_MINUTE": "0",
        "SHIPYARD_ERRORS_EVENTS_PER_HOUR": "0",
    }
    if args.postgres:
        env["SHIPYARD_DATABASE_URL"] = args.postgres
    try:
        shipyard = bench_shipyard(args, work, env)
        bodies = [make_envelope(n, "http://k@127.0.0.1/1") for n in range(PATHS)]
        baseline = bench_baseline(args, work, env, bodies)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {
        "connections": args.connections,
        "seconds": args.seconds,
        "database": "postgresql" if args.postgres else "sqlite",
        "digester": "in a separate worker process" if args.worker else "in the server process",
        "shipyard": shipyard,
        "baseline": baseline,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    s, w = shipyard, shipyard["wrk"]
    print(
        f"Sentry envelope ingest on {results['database']} (digester {results['digester']}), "
        f"{args.connections} connections, {args.seconds} s, "
        f"{s['bytes_per_envelope']} B envelopes (15 frames, 20 breadcrumbs, contexts), {PATHS} call paths"
    )
    print(f"{'':<38}{'events/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'non-200':>9}")
    print(
        f"{'shipyard POST /api/<id>/envelope/':<38}{s['accepted_per_s']:>10.0f}{w['p50_ms']:>9.2f}"
        f"{w['p95_ms']:>9.2f}{w['p99_ms']:>9.2f}{w['errors']:>9}"
    )
    print(
        f"{'baseline accept-and-discard ASGI':<38}{baseline['rps']:>10.0f}{baseline['p50_ms']:>9.2f}"
        f"{baseline['p95_ms']:>9.2f}{baseline['p99_ms']:>9.2f}{baseline['errors']:>9}"
    )
    print(f"ratio shipyard/baseline: {s['accepted_per_s'] / baseline['rps']:.2f}")
    print(
        f"CPU per event: server {s['server_cpu_ms_per_accepted']:.2f} ms per accepted event during the load "
        f"(baseline {baseline['cpu_ms_per_request']:.2f} ms per request); "
        f"{s['cpu_ms_per_grouped']:.2f} ms per grouped event, ingest + digest, all Shipyard processes"
    )
    drain = f"{s['grouped_drain_per_s']:.0f}/s" if s["grouped_drain_per_s"] else "n/a (no backlog)"
    print(
        f"grouped: {s['grouped_during_load_per_s']:.0f} events/s during the load; backlog of "
        f"{s['backlog_at_end']} envelopes drained in {s['drain_seconds']:.1f} s ({drain}); overall "
        f"{s['grouped_overall_per_s']:.0f}/s; {s['grouped_total']} events in {s['issues']} issues; "
        f"acknowledged but not on an issue: {max(0, s['lost'])}; failed envelopes: {s['failed_envelopes']}"
    )


if __name__ == "__main__":
    main()
