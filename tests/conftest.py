"""Shared fixtures.

* ``ctx`` — a Context on a fresh SQLite database (or PostgreSQL when
  ``SHIPYARD_TEST_BACKEND=postgres``), migrated.
* ``pg_ctx`` / ``redis_url`` — the scale-out engines. Skipped when unreachable on a
  laptop; under ``CI=true`` an unreachable server is a failure, never a skip.
* ``client`` — an httpx AsyncClient talking to the app in-process (lifespan run).
* ``project`` — a project with its public and secret keys.
* ``live_server`` — a real ``shipyard serve`` subprocess on a free port.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import settings as hypothesis_settings

from shipyard.app import create_app
from shipyard.core import auth, migrate, projects
from shipyard.core.auth import KeyCache, Role
from shipyard.core.context import Context
from shipyard.settings import Settings

# Under CI every property test draws the same examples (a failure there is reproducible, and
# a landing never fails on a case no one can find again); local runs stay random, and each
# bug they find gets a regression test of its own.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

PG_ADMIN_URL = os.environ.get("SHIPYARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SHIPYARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(what: str, why: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is required under CI but unreachable: {why}")
    pytest.skip(f"{what} unreachable: {why}")


def _pg_admin_dsn() -> str:
    return PG_ADMIN_URL.replace("postgresql://", "postgres://", 1)


async def _create_pg_database() -> str:
    import asyncpg

    name = f"shipyard_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(_pg_admin_dsn(), timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _db = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


async def _drop_pg_database(url: str) -> None:
    import asyncpg

    name = url.rpartition("/")[2]
    conn = await asyncpg.connect(_pg_admin_dsn(), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    try:
        url = await _create_pg_database()
    except Exception as exc:  # noqa: BLE001
        _unavailable("PostgreSQL", str(exc))
    try:
        yield url
    finally:
        await _drop_pg_database(url)


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A reachable Redis; each test uses its own key prefix via a fresh logical db flush-free URL."""
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:  # noqa: BLE001
        _unavailable("Redis", str(exc))
    finally:
        await client.aclose()
    yield REDIS_URL


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "secret_key": "test-secret-" + uuid.uuid4().hex,
        "public_url": "http://testserver",
        "embedded_worker": False,
        "allow_private_outbound": True,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(**values)


async def make_ctx(settings: Settings) -> Context:
    ctx = Context.create(settings)
    ctx.extras["key_cache"] = KeyCache(ttl=0)
    await migrate.upgrade(ctx.db)
    return ctx


@pytest.fixture
async def settings(tmp_path: Path) -> AsyncIterator[Settings]:
    if os.environ.get("SHIPYARD_TEST_BACKEND") == "postgres":
        url = await _create_pg_database()
        try:
            yield make_settings(tmp_path, database_url=url, redis_url=REDIS_URL)
        finally:
            await _drop_pg_database(url)
    else:
        yield make_settings(tmp_path)


@pytest.fixture
async def ctx(settings: Settings) -> AsyncIterator[Context]:
    context = await make_ctx(settings)
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture
async def pg_ctx(tmp_path: Path, pg_url: str) -> AsyncIterator[Context]:
    context = await make_ctx(make_settings(tmp_path, database_url=pg_url))
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture
async def app(ctx: Context) -> AsyncIterator[Any]:
    application = create_app(ctx=ctx)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
async def project(ctx: Context) -> dict[str, Any]:
    """A project plus an owner user; keys under ``public_key`` / ``secret_key``."""
    async with ctx.db.transaction() as conn:
        created = await projects.create_project(
            conn, "Test App " + uuid.uuid4().hex[:6], public_base=ctx.settings.public_base
        )
        password = "correct horse battery staple"
        user_id = await auth.create_user(conn, f"owner-{uuid.uuid4().hex[:6]}@example.com", password)
        await auth.set_role(conn, user_id, created["id"], Role.owner)
    created["owner_id"] = user_id
    created["owner_password"] = password
    return created


def admin_headers(project: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {project['secret_key']}"}


# --- real server processes --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            **env,
            "SHIPYARD_DATA_DIR": str(data_dir),
            "SHIPYARD_PUBLIC_URL": self.url,
            "SHIPYARD_PORT": str(self.port),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.creds: dict[str, Any] = {}

    def init(self) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "shipyard.cli", "init", "--json"],
            env=self.env,
            capture_output=True,
            check=True,
            timeout=120,
        )
        self.creds = json.loads(out.stdout)
        return self.creds

    def start(self, *extra: str) -> None:
        log = open(self.data_dir / f"server-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shipyard.cli", "serve", *extra], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited:\n" + (self.data_dir / f"server-{self.port}.log").read_text())
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not start in 60 s")

    def kill(self, sig: int = 9) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A real `shipyard serve` on SQLite with credentials from `shipyard init`."""
    server = LiveServer(
        tmp_path / "live",
        {
            "SHIPYARD_SECRET_KEY": "live-" + uuid.uuid4().hex,
            "SHIPYARD_ALLOW_PRIVATE_OUTBOUND": "true",
            "SHIPYARD_JOB_POLL_INTERVAL": "0.1",
        },
    )
    server.data_dir.mkdir(parents=True)
    server.init()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def run(coro: Any) -> Any:
    return asyncio.get_event_loop().run_until_complete(coro)
