"""Benchmark: notifications accepted by the push send API of a real `shipyard serve`
(SQLite), through the durable job queue (fan-out, delivery-time decisions, batching), to a
fake Expo Push API in its own process — next to a loop posting the same batches straight
to the same fake server in the same run.

    python bench/push_send.py [--devices 5000] [--rounds 4] [--rate 40] [--seconds 10] [--quick]

Phases:

1. **throughput**: sends of 100 device ids each (``POST /api/v1/projects/{id}/push/sends``,
   16 in flight) until every registered device got ``--rounds`` notifications; the clock
   stops when the fake Expo server has received the last one. Baseline: the same number
   of 100-message batches posted straight to the fake server, 6 in flight (Expo's limit,
   also Shipyard's `push_expo_concurrency`).
2. **broadcast**: one send to every device (`to: {all: true}`), 202 → last arrival.
3. **latency**: single immediate notifications (one device each) at ``--rate`` per
   second for ``--seconds`` (open loop); per notification, the time from the API's 202
   (and from the request's start) to the fake server receiving it. Baseline: the same
   single messages posted straight to the fake server.

The server's CPU time (user + system, from /proc) over the throughput phase is reported per
1,000 notifications: on a shared machine it moves much less than wall time.

Issue #5 targets on the 2-core machine: ≥ 2,000 notifications/s end to end, and p95 <
200 ms from acceptance to the provider request at moderate load. Server pinned to CPU 0,
the fake Expo server and this load generator to CPU 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
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

FAKE_APP = '''
"""The tests' fake Expo Push API plus counters and arrival times for the benchmark."""
import gzip
import time

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.push.fakes import FakeExpo


class BenchExpo(FakeExpo):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.arrivals: dict[str, float] = {}
        self.app.router.routes.append(Route("/_bench/stats", self.stats, methods=["GET"]))
        self.app.router.routes.append(Route("/_bench/reset", self.reset, methods=["POST"]))

    async def send(self, request: Request) -> Response:
        now = time.time()
        raw = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        body = orjson.loads(raw)
        items = body if isinstance(body, list) else [body]
        response = await super().send(request)
        if response.status_code == 200:
            self.count += len(items)
            self.first = self.first or now
            self.last = now
            for item in items:
                mark = (item.get("data") or {}).get("bench")
                if mark:
                    self.arrivals[mark] = now
        self.received.clear()  # keep memory flat: the benchmark only needs the counters
        return response

    async def stats(self, request: Request) -> Response:
        return JSONResponse(
            {"count": self.count, "first": self.first, "last": self.last, "arrivals": self.arrivals,
             "requests": self.send_requests}
        )

    async def reset(self, request: Request) -> Response:
        self.count, self.first, self.last, self.arrivals = 0, 0.0, 0.0, {}
        self.tickets.clear()
        return JSONResponse({"ok": True})


app = BenchExpo().app
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else []


def pin_self(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {cpu})


def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process for {url} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by a process and its children (py-spy's server),
    from /proc: a measure of cost that the machine's load does not distort like wall time."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def token(i: int) -> str:
    return f"ExponentPushToken[bench-{i:07d}]"


def message(i: int, mark: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"plantId": f"p-{i}"}
    if mark:
        data["bench"] = mark
    return {"title": "Water Blue Dream", "body": "Your plant needs water today", "data": data}


async def post(client: httpx.AsyncClient, path: str, **kw: Any) -> httpx.Response:
    """POST, again on a dropped keep-alive connection (safe: registrations are upserts and
    sends carry an idempotency key)."""
    for attempt in range(3):
        try:
            return await client.post(path, **kw)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError):
            if attempt == 2:
                raise
            await asyncio.sleep(0.05)
    raise AssertionError("unreachable")


async def gather_limited(n: int, limit: int, fn: Any) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with sem:
            return await fn(i)

    return await asyncio.gather(*(one(i) for i in range(n)))


async def wait_count(fake: httpx.AsyncClient, target: int, limit_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while True:
        stats = (await fake.get("/_bench/stats")).json()
        if stats["count"] >= target:
            return dict(stats)
        if time.monotonic() > deadline:
            raise SystemExit(f"only {stats['count']} of {target} notifications reached the fake Expo server")
        await asyncio.sleep(0.02)


async def run(
    args: argparse.Namespace, url: str, fake_url: str, creds: dict[str, Any], server_pid: int
) -> dict[str, Any]:
    pid = creds["project_id"]
    admin = {"Authorization": f"Bearer {creds['secret_key']}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as api,
        httpx.AsyncClient(base_url=fake_url, timeout=60, limits=limits) as fake,
    ):
        r = await api.put(f"/api/v1/projects/{pid}/push/credentials/expo", json={}, headers=admin)
        r.raise_for_status()

        async def register(i: int) -> int:
            resp = await post(
                api,
                "/push/v1/devices",
                json={"token": token(i), "platform": "ios" if i % 2 else "android", "user_id": f"u{i}"},
                headers={"X-Shipyard-Key": creds["public_key"]},
            )
            resp.raise_for_status()
            return int(resp.json()["id"])

        t0 = time.perf_counter()
        device_ids = await gather_limited(args.devices, 32, register)
        register_s = time.perf_counter() - t0
        sends_path = f"/api/v1/projects/{pid}/push/sends"

        # --- 1. throughput through the send API -------------------------------------------
        batches = [device_ids[i : i + 100] for i in range(0, len(device_ids), 100)] * args.rounds
        total = sum(len(b) for b in batches)
        await fake.post("/_bench/reset")
        accepted_at: list[float] = []

        async def post_send(i: int) -> None:
            resp = await post(
                api,
                sends_path,
                json={
                    "to": {"device_ids": batches[i]},
                    "notification": message(i),
                    "campaign": "bench",
                    "idempotency_key": f"bench-{i}",
                },
                headers=admin,
            )
            if resp.status_code != 202:
                raise SystemExit(f"send refused: {resp.status_code} {resp.text}")
            accepted_at.append(time.perf_counter())

        start = time.perf_counter()
        wall_start = time.time()
        cpu_start = cpu_seconds(server_pid)
        await gather_limited(len(batches), 16, post_send)
        accept_s = accepted_at[-1] - start
        stats = await wait_count(fake, total, limit_s=600)
        e2e_s = stats["last"] - wall_start
        server_cpu = cpu_seconds(server_pid) - cpu_start
        throughput = {
            "server_cpu_seconds": server_cpu,
            "server_cpu_ms_per_1000": server_cpu * 1000 / total * 1000,
            "notifications": total,
            "sends": len(batches),
            "accept_seconds": accept_s,
            "accepted_per_s": total / accept_s,
            "seconds": e2e_s,
            "per_s": total / e2e_s,
            "expo_requests": stats["requests"],
        }

        # Baseline: the same batches straight to the fake server.
        await fake.post("/_bench/reset")
        bodies = [[{"to": token(i), **message(i)} for i in range(len(b))] for b in batches]

        async def post_batch(i: int) -> None:
            resp = await fake.post(
                "/--/api/v2/push/send", content=json.dumps(bodies[i]), headers={"content-type": "application/json"}
            )
            resp.raise_for_status()

        start = time.perf_counter()
        await gather_limited(len(bodies), 6, post_batch)
        base_s = time.perf_counter() - start
        baseline = {"notifications": total, "seconds": base_s, "per_s": total / base_s}

        # --- 2. broadcast ------------------------------------------------------------------
        await fake.post("/_bench/reset")
        wall_start = time.time()
        resp = await api.post(
            sends_path, json={"to": {"all": True}, "notification": message(0), "campaign": "bench-all"}, headers=admin
        )
        resp.raise_for_status()
        stats = await wait_count(fake, len(device_ids), limit_s=600)
        broadcast_s = stats["last"] - wall_start
        broadcast = {"notifications": len(device_ids), "seconds": broadcast_s, "per_s": len(device_ids) / broadcast_s}

        # --- 3. latency of single immediate notifications at a moderate rate --------------
        async def latency_run(direct: bool) -> dict[str, Any]:
            await fake.post("/_bench/reset")
            n = max(1, int(args.rate * args.seconds))
            started: dict[str, float] = {}
            answered: dict[str, float] = {}

            async def one(i: int) -> None:
                mark = uuid.uuid4().hex
                body = message(i, mark)
                started[mark] = time.time()
                if direct:
                    resp = await fake.post("/--/api/v2/push/send", json={"to": token(i % len(device_ids)), **body})
                else:
                    resp = await post(
                        api,
                        sends_path,
                        json={
                            "to": {"device_ids": [device_ids[i % len(device_ids)]]},
                            "notification": body,
                            "idempotency_key": mark,
                        },
                        headers=admin,
                    )
                if resp.status_code not in (200, 202):
                    raise SystemExit(f"latency send refused: {resp.status_code} {resp.text}")
                answered[mark] = time.time()

            tasks = []
            begin = time.perf_counter()
            for i in range(n):
                delay = begin + i / args.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
            stats = await wait_count(fake, n, limit_s=120)
            arrivals = stats["arrivals"]
            from_accept = [(arrivals[m] - answered[m]) * 1000 for m in answered if m in arrivals]
            from_start = [(arrivals[m] - started[m]) * 1000 for m in started if m in arrivals]
            return {
                "n": n,
                "rate": args.rate,
                "accept_p50_ms": pct(from_accept, 50),
                "accept_p95_ms": pct(from_accept, 95),
                "accept_p99_ms": pct(from_accept, 99),
                "start_p50_ms": pct(from_start, 50),
                "start_p95_ms": pct(from_start, 95),
                "start_p99_ms": pct(from_start, 99),
            }

        latency = await latency_run(direct=False)
        latency_base = await latency_run(direct=True)
    return {
        "devices": args.devices,
        "register_seconds": register_s,
        "throughput": throughput,
        "baseline": baseline,
        "broadcast": broadcast,
        "latency": latency,
        "latency_baseline": latency_base,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=4, help="notifications per device in the throughput phase")
    parser.add_argument("--rate", type=float, default=40.0, help="single notifications per second (latency phase)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency phase")
    parser.add_argument("--quick", action="store_true", help="1000 devices, 2 rounds, 5 s latency phase")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    parser.add_argument("--profile", metavar="FILE", help="record the server with py-spy (collapsed stacks) to FILE")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.rounds, args.seconds = 1000, 2, 5.0
    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-push-"))
    port, fake_port = free_port(), free_port()
    url, fake_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{fake_port}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "SHIPYARD_DATA_DIR": str(work / "data"),
        "SHIPYARD_PUBLIC_URL": url,
        "SHIPYARD_PORT": str(port),
        "SHIPYARD_SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "SHIPYARD_LOG_LEVEL": "WARNING",
        "SHIPYARD_RATE_LIMIT_PER_IP": "100000000/minute",
        "SHIPYARD_RATE_LIMIT_PER_KEY": "100000000/minute",
        "SHIPYARD_PUSH_EXPO_URL": fake_url,
        "SHIPYARD_PUSH_RECEIPT_DELAY_SECONDS": "3600",  # receipts are not what is measured here
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        (work / "bench_fake_expo.py").write_text(textwrap.dedent(FAKE_APP))
        fake = subprocess.Popen(
            [*pin(1), sys.executable, "-m", "uvicorn", "bench_fake_expo:app", "--port", str(fake_port)]
            + ["--log-level", "warning", "--no-access-log"],
            cwd=work,
            env={**env, "PYTHONPATH": os.pathsep.join([str(work), env["PYTHONPATH"]])},
        )
        procs.append(fake)
        creds = json.loads(
            subprocess.run(
                [sys.executable, "-m", "shipyard.cli", "init", "--json"], env=env, capture_output=True, check=True
            ).stdout
        )
        spy = (
            ["py-spy", "record", "--gil", "--format", "raw", "-r", "200", "-o", args.profile, "--"]
            if args.profile
            else []
        )
        server = subprocess.Popen(
            [*pin(0), *spy, sys.executable, "-m", "shipyard.cli", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        procs.append(server)
        wait_up(url + "/healthz", server)
        wait_up(fake_url + "/_bench/stats", fake)
        pin_self(1)
        results = asyncio.run(run(args, url, fake_url, creds, server.pid))
    finally:
        if args.profile and procs[-1].poll() is None:
            procs[-1].send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            with contextlib.suppress(subprocess.TimeoutExpired):
                procs[-1].wait(timeout=60)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    t, b, bc = results["throughput"], results["baseline"], results["broadcast"]
    print(f"push send benchmark: {results['devices']} devices (registered in {results['register_seconds']:.1f} s)")
    print(f"{'':<52}{'notifs':>8}{'seconds':>9}{'notifs/s':>10}")
    print(
        f"{'shipyard: send API -> queue -> fake Expo':<52}{t['notifications']:>8}{t['seconds']:>9.2f}"
        f"{t['per_s']:>10.0f}"
    )
    print(
        f"{'  (accepted by the send API)':<52}{t['notifications']:>8}{t['accept_seconds']:>9.2f}"
        f"{t['accepted_per_s']:>10.0f}"
    )
    print(
        f"{'shipyard: one broadcast send (all devices)':<52}{bc['notifications']:>8}{bc['seconds']:>9.2f}"
        f"{bc['per_s']:>10.0f}"
    )
    print(
        f"{'baseline: same batches straight to fake Expo':<52}{b['notifications']:>8}{b['seconds']:>9.2f}"
        f"{b['per_s']:>10.0f}"
    )
    print(f"ratio shipyard/baseline: {t['per_s'] / b['per_s']:.2f}   (target ≥ 2000 notifications/s end to end)")
    print(
        f"server CPU in the throughput phase: {t['server_cpu_seconds']:.2f} s = "
        f"{t['server_cpu_ms_per_1000']:.0f} ms per 1,000 notifications "
        f"(a one-core ceiling of {t['notifications'] / max(t['server_cpu_seconds'], 1e-9):.0f} notifications/s)"
    )
    lat, lb = results["latency"], results["latency_baseline"]
    print(f"single immediate notifications at {lat['rate']:.0f}/s, n={lat['n']} (target p95 < 200 ms)")
    print(f"{'':<52}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
    print(
        f"{'shipyard: 202 -> provider request':<52}{lat['accept_p50_ms']:>9.1f}{lat['accept_p95_ms']:>9.1f}"
        f"{lat['accept_p99_ms']:>9.1f}"
    )
    print(
        f"{'shipyard: request start -> provider request':<52}{lat['start_p50_ms']:>9.1f}{lat['start_p95_ms']:>9.1f}"
        f"{lat['start_p99_ms']:>9.1f}"
    )
    print(
        f"{'baseline: request start -> fake Expo (direct)':<52}{lb['start_p50_ms']:>9.1f}{lb['start_p95_ms']:>9.1f}"
        f"{lb['start_p99_ms']:>9.1f}"
    )


if __name__ == "__main__":
    main()
