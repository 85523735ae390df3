"""PostgreSQL going away: 503 + Retry-After and a failing /readyz, then recovery without a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from shipyard.app import create_app
from shipyard.core import jobs, projects
from tests.conftest import make_ctx, make_settings
from tests.core.tcp_proxy import TcpProxy


@pytest.mark.postgres
async def test_database_outage_answers_503_and_recovers_without_restart(tmp_path: Path, pg_url: str) -> None:
    parts = urlsplit(pg_url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        proxied = pg_url.replace(f"{parts.hostname}:{parts.port or 5432}", f"127.0.0.1:{proxy.port}")
        ctx = await make_ctx(make_settings(tmp_path, database_url=proxied, db_connect_timeout=2.0))
        try:
            async with ctx.db.transaction() as conn:
                project = await projects.create_project(conn, "Outage App", public_base="http://testserver")
            await jobs.Worker(ctx)._heartbeat(first=True)
            app = create_app(ctx=ctx)
            headers = {"Authorization": f"Bearer {project['secret_key']}"}
            url = f"/api/v1/projects/{project['id']}"
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client,
            ):
                assert (await client.get(url, headers=headers)).status_code == 200
                assert (await client.get("/readyz")).status_code == 200

                proxy.cut()
                for request in (
                    client.get(url, headers=headers),
                    client.post(f"{url}/keys", json={"name": "during outage"}, headers=headers),
                ):
                    r = await request
                    assert r.status_code == 503, r.text
                    assert r.headers["retry-after"] == "5"
                    assert r.json()["error"]["code"] == "unavailable"
                ready = await client.get("/readyz")
                assert ready.status_code == 503 and ready.headers["retry-after"]
                assert ready.json()["checks"]["database"] != "ok"
                assert (await client.get("/healthz")).status_code == 200  # alive, just not ready

                proxy.restore()
                statuses = []
                for _ in range(50):
                    statuses.append((await client.get(url, headers=headers)).status_code)
                    if statuses[-1] == 200:
                        break
                    await asyncio.sleep(0.1)
                assert statuses[-1] == 200, statuses
                assert (await client.get("/readyz")).status_code == 200
                created = await client.post(f"{url}/keys", json={"name": "after outage"}, headers=headers)
                assert created.status_code == 201
        finally:
            await ctx.close()
