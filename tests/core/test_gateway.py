"""The gateway in front of every route: request ids, body limits, decompression, CORS, rate limits."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import brotli
import orjson
import zstandard
from sqlalchemy import select

from shipyard.core import projects
from shipyard.core.models import audit_log
from tests.core.conftest import AppClient


async def make_project(ctx: Any, name: str = "Gateway App") -> dict[str, Any]:
    async with ctx.db.transaction() as conn:
        return await projects.create_project(conn, name, public_base=ctx.settings.public_base)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- request ids -------------------------------------------------------------------------------


async def test_request_id_is_echoed_generated_and_reaches_the_audit_trail(app_client: AppClient) -> None:
    async with app_client() as (client, ctx):
        project = await make_project(ctx)
        r = await client.get("/healthz", headers={"X-Request-ID": "trace-abc.123"})
        assert r.headers["x-request-id"] == "trace-abc.123"
        generated = (await client.get("/healthz")).headers["x-request-id"]
        assert len(generated) == 32 and generated != (await client.get("/healthz")).headers["x-request-id"]
        # Header injection or absurd ids are replaced, not echoed.
        r = await client.get("/healthz", headers={"X-Request-ID": "x" * 500})
        assert len(r.headers["x-request-id"]) == 32
        # Errors carry the id too, and an admin action records it in the audit trail.
        assert (await client.get("/nope", headers={"X-Request-ID": "rid-404"})).headers["x-request-id"] == "rid-404"
        created = await client.post(
            f"/api/v1/projects/{project['id']}/keys",
            json={"name": "ci"},
            headers={**bearer(project["secret_key"]), "X-Request-ID": "rid-create-key"},
        )
        assert created.status_code == 201
        async with ctx.db.connect() as conn:
            row = (await conn.execute(select(audit_log).where(audit_log.c.action == "key.create"))).one()
        assert row.request_id == "rid-create-key"


# --- bodies -------------------------------------------------------------------------------------

PLAIN = orjson.dumps({"batch": [{"event": "plant_created", "n": i} for i in range(200)]})
ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}


async def test_compressed_bodies_reach_routes_decoded_without_content_encoding(app_client: AppClient) -> None:
    async with app_client() as (client, ctx):
        for encoding, encode in ENCODERS.items():
            r = await client.post("/fake/1/ingest", content=encode(PLAIN), headers={"Content-Encoding": encoding})
            assert r.status_code == 200, (encoding, r.text)
            assert r.json()["size"] == len(PLAIN) and r.json()["encoding"] is None
        # Admin routes get the same treatment: a gzip JSON body creates a key.
        project = await make_project(ctx)
        r = await client.post(
            f"/api/v1/projects/{project['id']}/keys",
            content=gzip.compress(b'{"name": "gzipped"}'),
            headers={**bearer(project["secret_key"]), "Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        assert r.status_code == 201, r.text


async def test_body_limits_answer_413_and_bad_encodings_4xx(app_client: AppClient) -> None:
    async with app_client(max_body_bytes=10_000, max_decompressed_bytes=50_000) as (client, _ctx):
        too_big = await client.post("/fake/1/ingest", content=b"x" * 10_001)
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "payload_too_large"

        bomb = gzip.compress(b"\0" * 5_000_000)  # ~5 KB that inflates to 5 MB
        assert len(bomb) < 10_000
        r = await client.post("/fake/1/ingest", content=bomb, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413 and "decompressed" in r.json()["error"]["message"]

        r = await client.post("/fake/1/ingest", content=b"not gzip at all", headers={"Content-Encoding": "gzip"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_encoding"
        r = await client.post("/fake/1/ingest", content=b"abc", headers={"Content-Encoding": "compress"})
        assert r.status_code == 415

        async def chunks() -> Any:  # no Content-Length: counted as it streams in
            for _ in range(20):
                yield b"y" * 1000

        r = await client.post("/fake/1/ingest", content=chunks())
        assert r.status_code == 413
        ok = await client.post("/fake/1/ingest", content=b"z" * 9_000)
        assert ok.status_code == 200 and ok.json()["size"] == 9_000


# --- CORS --------------------------------------------------------------------------------------


async def test_cors_on_client_routes_only(app_client: AppClient) -> None:
    async with app_client(cors_origins=["https://app.example.com"]) as (client, ctx):
        project = await make_project(ctx)
        preflight = {
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, sentry-trace",
        }
        r = await client.options("/fake/1/ingest", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "sentry-trace" in r.headers["access-control-allow-headers"].lower()

        r = await client.post("/fake/1/ingest", content=b"{}", headers={"Origin": "https://app.example.com"})
        assert r.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        # Another origin gets no grant.
        r = await client.post("/fake/1/ingest", content=b"{}", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers

        # The admin API and the dashboard never answer CORS: a browser page elsewhere cannot use them.
        r = await client.options(f"/api/v1/projects/{project['id']}", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        r = await client.get(
            f"/api/v1/projects/{project['id']}",
            headers={**bearer(project["secret_key"]), "Origin": "https://app.example.com"},
        )
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        r = await client.get("/login", headers={"Origin": "https://app.example.com"})
        assert "access-control-allow-origin" not in r.headers


# --- rate limits ----------------------------------------------------------------------------------


async def test_admin_key_limit_answers_429_with_headers(app_client: AppClient) -> None:
    async with app_client(rate_limit_per_key="3/minute") as (client, ctx):
        project = await make_project(ctx)
        other = await make_project(ctx, "Other App")
        url = f"/api/v1/projects/{project['id']}"
        for remaining in (2, 1, 0):
            r = await client.get(url, headers=bearer(project["secret_key"]))
            assert r.status_code == 200 and r.headers["ratelimit-remaining"] == str(remaining)
        r = await client.get(url, headers=bearer(project["secret_key"]))
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1 and r.headers["ratelimit-limit"] == "3"
        # Another key has its own budget.
        r = await client.get(f"/api/v1/projects/{other['id']}", headers=bearer(other["secret_key"]))
        assert r.status_code == 200


async def test_ip_limit_applies_to_dashboard_but_never_to_probes(app_client: AppClient) -> None:
    async with app_client(rate_limit_per_ip="2/minute") as (client, _ctx):
        assert [(await client.get("/login")).status_code for _ in range(3)] == [200, 200, 429]
        assert {(await client.get("/healthz")).status_code for _ in range(5)} == {200}
        # Client routes are governed by feature quotas, not the admin IP budget.
        assert {(await client.post("/fake/1/ingest", content=b"{}")).status_code for _ in range(5)} == {200}


async def test_client_key_limits_cover_every_way_a_client_sends_its_key(app_client: AppClient) -> None:
    import base64

    async with app_client(rate_limit_client_per_key="2/minute") as (client, _ctx):
        ways = {
            "sentry header": {"X-Sentry-Auth": "Sentry sentry_version=7, sentry_key=pk_aaa, sentry_client=x/1"},
            "basic (segment)": {"Authorization": "Basic " + base64.b64encode(b"wk_bbb:").decode()},
            "bearer (ofrep)": {"Authorization": "Bearer pk_ccc"},
        }

        async def codes(url: str, headers: dict[str, str]) -> list[int]:
            return [(await client.post(url, content=b"{}", headers=headers)).status_code for _ in range(3)]

        for name, headers in ways.items():
            assert await codes("/fake/1/ingest", headers) == [200, 200, 429], name
        assert await codes("/fake/1/ingest?sentry_key=pk_ddd", {}) == [200, 200, 429]
        # No key at all: not limited by the per-key budget.
        assert {(await client.post("/fake/1/ingest", content=b"{}")).status_code for _ in range(4)} == {200}


async def test_unhandled_errors_are_json_500_with_the_request_id(app_client: AppClient) -> None:
    from fastapi import APIRouter

    async with app_client() as (client, _ctx):
        router = APIRouter()

        @router.get("/boom")
        async def boom() -> None:
            raise RuntimeError("kaput")

        client._transport.app.include_router(router)  # type: ignore[attr-defined]
        r = await client.get("/boom", headers={"X-Request-ID": "rid-boom"})
        assert r.status_code == 500
        assert r.json()["error"]["code"] == "internal_error" and "rid-boom" in r.json()["error"]["message"]
        assert r.headers["x-request-id"] == "rid-boom"
