"""Scale-out: two `shipyard serve --no-worker` API processes and two `shipyard worker`
processes on one PostgreSQL database and one Redis. Both nodes are ready only through the
separate workers, a per-key rate limit holds across both nodes (counters in Redis), a key
made on one node works on the other, and jobs are run by the workers."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import func, select

from shipyard.core import jobs
from shipyard.core.models import jobs as jobs_table
from tests.conftest import LiveServer, make_ctx, make_settings
from tests.core.test_worker_processes import read_events, start_worker, stop


async def test_two_api_nodes_and_two_workers_share_postgresql_and_redis(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    prefix = uuid.uuid4().hex[:8]
    env = {
        "SHIPYARD_DATABASE_URL": pg_url,
        "SHIPYARD_REDIS_URL": redis_url,
        "SHIPYARD_SECRET_KEY": "scale-out-" + uuid.uuid4().hex,
        "SHIPYARD_RATE_LIMIT_PER_KEY": "25/minute",
        "SHIPYARD_JOB_POLL_INTERVAL": "0.1",
    }
    data = tmp_path / "data"
    data.mkdir()
    nodes = [LiveServer(data, env), LiveServer(data, env)]
    creds = nodes[0].init()
    worker_env = {**nodes[0].env, "SHIPYARD_JOB_LEASE_SECONDS": "30"}
    workers = [start_worker(worker_env, tmp_path / "w1.log"), start_worker(worker_env, tmp_path / "w2.log")]
    ctx = await make_ctx(make_settings(tmp_path, database_url=pg_url, secret_key=env["SHIPYARD_SECRET_KEY"]))
    stack = contextlib.AsyncExitStack()
    try:
        await asyncio.gather(*(asyncio.to_thread(node.start, "--no-worker") for node in nodes))
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        # Ready only once a separate worker beats: neither node runs one itself.
        deadline = time.monotonic() + 60
        while True:
            codes = [(await http.get(n.url + "/readyz")).status_code for n in nodes]
            if codes == [200, 200]:
                break
            assert time.monotonic() < deadline, f"nodes not ready: {codes}"
            await asyncio.sleep(0.2)

        # A key made through node 0 works on node 1 at once.
        admin = {"Authorization": f"Bearer {creds['secret_key']}"}
        made = await http.post(
            f"{nodes[0].url}/api/v1/projects/{creds['project_id']}/keys",
            json={"name": f"ci-{prefix}", "role": "developer"},
            headers=admin,
        )
        assert made.status_code == 201, made.text
        new_key = {"Authorization": f"Bearer {made.json()['secret_key']}"}

        # 25 requests per minute for this key, counted across both nodes.
        answers = [await http.get(f"{nodes[i % 2].url}/api/v1/projects", headers=new_key) for i in range(40)]
        codes = [a.status_code for a in answers]
        assert codes.count(200) == 25 and codes.count(429) == 15, codes
        limited = next(a for a in answers if a.status_code == 429)
        assert int(limited.headers["Retry-After"]) > 0 and limited.json()["error"]["code"]
        assert {answers[i].status_code for i in range(0, 40, 2)} >= {429}  # node 0 limits too
        assert {answers[i].status_code for i in range(1, 40, 2)} >= {429}  # and node 1

        # Jobs enqueued once are run once, by whichever worker claims them.
        events = tmp_path / "events.log"
        async with ctx.db.transaction() as conn:
            for _ in range(40):
                await jobs.enqueue(conn, "probe.record", {"log": str(events), "sleep": 0.01})
        deadline = time.monotonic() + 60
        while len([e for e in read_events(events) if e[0] == "done"]) < 40:
            assert time.monotonic() < deadline, "jobs not drained"
            await asyncio.sleep(0.1)
        # The handler notes "done" just before its worker commits the outcome: wait for the commits.
        while True:
            async with ctx.db.connect() as conn:
                done = (
                    await conn.execute(
                        select(func.count()).where(jobs_table.c.kind == "probe.record", jobs_table.c.status == "done")
                    )
                ).scalar_one()
            if done >= 40:
                break
            assert time.monotonic() < deadline, f"only {done} of 40 jobs recorded as done"
            await asyncio.sleep(0.1)
        assert done == 40 and len({j for _, j, _ in read_events(events)}) == 40
    finally:
        await stack.aclose()
        for node in nodes:
            node.stop()
        stop(workers)
        await ctx.close()
