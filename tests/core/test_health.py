"""Readiness with reasons, Prometheus metrics, offline API docs, paginated lists."""

from __future__ import annotations

import re
import shutil
from typing import Any

from prometheus_client import Counter

from shipyard.core import auth, jobs, projects
from shipyard.core.auth import Role
from tests.core.conftest import AppClient
from tests.core.test_gateway import bearer, make_project

FEATURE_METRIC = Counter("shipyard_testfeature_things_total", "A feature's own metric on the default registry")


@jobs.handler("test.health.noop")
async def _noop(ctx: Any, payload: dict[str, Any], job: jobs.JobInfo) -> None:
    return None


async def test_readyz_names_what_is_missing(app_client: AppClient) -> None:
    async with app_client() as (client, ctx):
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.headers["retry-after"]
        body = r.json()
        assert body["checks"]["database"] == "ok" and body["checks"]["blob_store"] == "ok"
        assert "heartbeat" in body["checks"]["worker"] and "heartbeat" in body["error"]["message"]

        # A worker (embedded or `shipyard worker`, any node) heartbeats: ready.
        await jobs.Worker(ctx)._heartbeat(first=True)
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json() == {
            "status": "ready",
            "checks": {"database": "ok", "blob_store": "ok", "worker": "ok"},
        }

        # The blob store stops being writable (its directory replaced by a file).
        blobs = ctx.settings.resolved_data_dir / "blobs"
        shutil.rmtree(blobs)
        blobs.write_text("not a directory")
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["blob_store"] != "ok"
        assert r.json()["checks"]["database"] == "ok"


async def test_readyz_checks_redis_when_configured(app_client: AppClient) -> None:
    async with app_client(redis_url="redis://127.0.0.1:1/0", readyz_require_worker=False) as (client, _ctx):
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert set(r.json()["checks"]) == {"database", "blob_store", "redis"}
        assert r.json()["checks"]["redis"] != "ok"


async def test_metrics_expose_requests_jobs_and_feature_metrics(app_client: AppClient) -> None:
    FEATURE_METRIC.inc(3)
    async with app_client() as (client, ctx):
        project = await make_project(ctx)
        for _ in range(2):
            assert (
                await client.get(f"/api/v1/projects/{project['id']}", headers=bearer(project["secret_key"]))
            ).is_success
        assert (await client.get(f"/api/v1/projects/{project['id']}")).status_code == 401
        async with ctx.db.transaction() as conn:
            for n in range(3):
                await jobs.enqueue(conn, "test.health.noop", {"n": n})
        text = (await client.get("/metrics")).text
        route = 'route="/api/v1/projects/{project}"'
        assert re.search(
            r'shipyard_http_requests_total\{method="GET",' + re.escape(route) + r',status="200"\} [2-9]', text
        )
        assert f'shipyard_http_requests_total{{method="GET",{route},status="401"}}' in text
        assert f'shipyard_http_request_duration_seconds_bucket{{le="0.1",method="GET",{route}}}' in text
        assert 'shipyard_jobs_queue_depth{status="queued"} 3.0' in text
        assert re.search(r"shipyard_testfeature_things_total [1-9]", text)

        await jobs.Worker(ctx).run_until_idle()
        text = (await client.get("/metrics")).text
        assert 'shipyard_jobs_queue_depth{status="queued"} 0.0' in text
        assert re.search(r'shipyard_jobs_finished_total\{kind="test.health.noop",outcome="done"\} [3-9]', text)
        # Unknown paths share one label, so scanners cannot blow up the series count.
        await client.get("/wp-admin/setup.php")
        assert 'route="<unmatched>",status="404"' in (await client.get("/metrics")).text


async def test_metrics_token(app_client: AppClient) -> None:
    async with app_client(metrics_token="scrape-me") as (client, _ctx):
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers=bearer("wrong"))).status_code == 401
        assert (await client.get("/metrics", headers=bearer("scrape-me"))).status_code == 200


async def test_api_docs_render_every_operation_offline(app_client: AppClient) -> None:
    async with app_client() as (client, _ctx):
        spec = (await client.get("/api/openapi.json")).json()
        r = await client.get("/api/docs")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        html = r.text
        for path, item in spec["paths"].items():
            for method in item:
                assert f'{method.upper()}</span><span class="path">{path}</span>' in html, (method, path)
        assert "KeyOut" in html and "secret_key" in html  # schemas are described too
        # Nothing is loaded from elsewhere: no external scripts, styles or images.
        assert not re.search(r'(src|href)="(https?:)?//', html)
        assert "<script" not in html


async def test_core_lists_paginate(app_client: AppClient) -> None:
    async with app_client() as (client, ctx):
        project = await make_project(ctx)
        headers = bearer(project["secret_key"])
        base = f"/api/v1/projects/{project['id']}"
        for n in range(4):
            assert (await client.post(f"{base}/keys", json={"name": f"k{n}"}, headers=headers)).status_code == 201
        seen: list[int] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await client.get(f"{base}/keys", params=params, headers=headers)).json()
            assert len(page["data"]) <= 2
            seen += [k["id"] for k in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == 6 and seen == sorted(set(seen))  # public + default + 4, no repeats
        assert (await client.get(f"{base}/keys", params={"cursor": "!!"}, headers=headers)).status_code == 400

        async with ctx.db.transaction() as conn:
            for n in range(3):
                user_id = await auth.create_user(conn, f"m{n}@example.com", "a long enough password")
                await auth.set_role(conn, user_id, project["id"], Role.viewer)
            await projects.create_project(conn, "Second", public_base="http://testserver")
        members = (await client.get(f"{base}/members", params={"limit": 2}, headers=headers)).json()
        assert len(members["data"]) == 2 and members["next_cursor"]
        rest = (await client.get(f"{base}/members", params={"cursor": members["next_cursor"]}, headers=headers)).json()
        assert len(rest["data"]) == 1 and rest["next_cursor"] is None
        listed = (await client.get("/api/v1/projects", params={"limit": 1}, headers=headers)).json()
        assert [p["id"] for p in listed["data"]] == [project["id"]] and listed["next_cursor"] is None
