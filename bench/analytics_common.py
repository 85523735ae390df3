"""Shared pieces of the analytics benchmarks: realistic Segment messages as
`@segment/analytics-react-native` sends them, and a real `shipyard serve` in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]

SCREENS = ["Home", "PlantList", "PlantDetail", "Community", "PostDetail", "StrainSearch", "Calendar", "Diagnosis"]
TRACKS: list[tuple[str, Any]] = [
    ("plant_created", lambda r: {"plant_id": f"p{r.randrange(10**6)}", "strain": "Blue Dream", "stage": "seedling"}),
    ("care_task_completed", lambda r: {"plant_id": f"p{r.randrange(10**6)}", "task_type": "watering", "on_time": True}),
    ("post_created", lambda r: {"post_id": f"post{r.randrange(10**6)}", "has_image": r.random() < 0.5}),
    ("post_liked", lambda r: {"post_id": f"post{r.randrange(10**6)}"}),
    ("strain_searched", lambda r: {"query": "haze", "results": r.randrange(50)}),
    ("reminder_created", lambda r: {"reminder_type": "watering", "repeat_days": 3}),
]


def mobile_context(rng: random.Random, device_id: str) -> dict[str, Any]:
    ios = rng.random() < 0.5
    return {
        "app": {"name": "CanaBro", "version": "2.4.1", "build": "241", "namespace": "com.canabro.app"},
        "device": {
            "id": device_id,
            "manufacturer": "Apple" if ios else "Google",
            "model": "iPhone15,2" if ios else "Pixel 8",
            "name": "iPhone" if ios else "husky",
            "type": "ios" if ios else "android",
        },
        "library": {"name": "@segment/analytics-react-native", "version": "2.20.3"},
        "locale": "en-US",
        "network": {"cellular": False, "wifi": True},
        "os": {"name": "iOS" if ios else "Android", "version": "17.4" if ios else "14"},
        "screen": {"density": 3, "height": 844, "width": 390},
        "timezone": "Europe/Berlin",
        "traits": {},
        "instanceId": device_id,
    }


def message(rng: random.Random, when: datetime) -> dict[str, Any]:
    """One event of a random user, shaped like the React Native SDK's batch items."""
    user = rng.randrange(100_000)
    anonymous_id = f"anon-{user:06d}"
    ts = when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    base: dict[str, Any] = {
        "messageId": str(uuid.uuid4()),
        "anonymousId": anonymous_id,
        "userId": f"user-{user:06d}",
        "timestamp": ts,
        "context": mobile_context(rng, f"dev-{user:06d}"),
        "integrations": {},
    }
    roll = rng.random()
    if roll < 0.4:
        base.update(type="screen", name=rng.choice(SCREENS), properties={})
    elif roll < 0.97:
        name, props = rng.choice(TRACKS)
        base.update(type="track", event=name, properties=props(rng))
    else:
        base.update(type="identify", traits={"subscription_tier": "free", "plant_count": rng.randrange(20)})
    return base


def batch_body(rng: random.Random, size: int, write_key: str) -> bytes:
    now = datetime.now(UTC)
    items = [message(rng, now - timedelta(seconds=rng.randrange(3600))) for _ in range(size)]
    sent_at = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"batch": items, "sentAt": sent_at, "writeKey": write_key}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else []


class Server:
    """`shipyard init` + `shipyard serve` on a fresh data directory (and database)."""

    def __init__(self, work: Path, database_url: str | None = None, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT / "src"),
            "SHIPYARD_DATA_DIR": str(work / "data"),
            "SHIPYARD_PUBLIC_URL": self.url,
            "SHIPYARD_PORT": str(self.port),
            "SHIPYARD_SECRET_KEY": "bench-" + uuid.uuid4().hex,
            "SHIPYARD_LOG_LEVEL": "WARNING",
            "SHIPYARD_RATE_LIMIT_PER_IP": "100000000/minute",
            "SHIPYARD_RATE_LIMIT_PER_KEY": "100000000/minute",
            "SHIPYARD_ANALYTICS_RATE_LIMIT": "100000000/minute",
            **env,
        }
        if database_url:
            self.env["SHIPYARD_DATABASE_URL"] = database_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.creds: dict[str, Any] = {}

    def init(self) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "shipyard.cli", "init", "--json"], env=self.env, capture_output=True, check=True
        )
        self.creds = json.loads(out.stdout)
        return self.creds

    def start(self, *extra: str, cpu: int | None = 0) -> None:
        prefix = pin(cpu) if cpu is not None else []
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "shipyard.cli", "serve", *extra],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_up(self.url + "/healthz", self.proc)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


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


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99)}


async def create_pg_database(name: str) -> str:
    """A fresh PostgreSQL database on the local server (trust auth), returned as a URL."""
    import asyncpg

    admin = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin.rsplit("/", 1)[0] + "/" + name


async def drop_pg_database(name: str) -> None:
    import asyncpg

    admin = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)
