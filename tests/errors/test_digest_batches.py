"""The digester's batched writes, on SQLite and PostgreSQL: events, issue counters and
issue users come out as they would one event at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy import delete, select

from shipyard.app import create_app
from shipyard.core import projects
from shipyard.core.context import Context
from shipyard.core.models import jobs
from shipyard.errors import digest
from shipyard.errors.models import event_data, events, issues
from tests.errors.helpers import error_event, frame, process, send_events


async def _client(ctx: Context) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(ctx=ctx)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def _crash(path: str, user: str | None) -> dict[str, Any]:
    return error_event(
        frames=[frame("main", "app.main"), frame(f"handle_{path}", f"app.{path}")],
        user={"id": user} if user else None,
    )


async def _issue_counts(ctx: Context) -> dict[str, tuple[int, int]]:
    async with ctx.db.connect() as conn:
        rows = await conn.execute(select(issues.c.culprit, issues.c.times_seen, issues.c.users_seen))
        return {str(r.culprit): (r.times_seen, r.users_seen) for r in rows}


async def test_batched_writes_on_sqlite(ctx: Context) -> None:
    async for client in _client(ctx):
        await _check_batched_writes(ctx, client)


async def test_batched_writes_on_postgresql(pg_ctx: Context) -> None:
    async for client in _client(pg_ctx):
        await _check_batched_writes(pg_ctx, client)


async def _check_batched_writes(ctx: Context, client: httpx.AsyncClient) -> None:
    """Counts per issue and distinct users per issue, in one batch and across two."""
    async with ctx.db.transaction() as conn:
        project = await projects.create_project(conn, "Batches", public_base=ctx.settings.public_base)
    first = [_crash("cart", "u1"), _crash("cart", "u2"), _crash("cart", "u1"), _crash("pay", "u3"), _crash("pay", None)]
    await send_events(client, project, *first)
    assert await process(ctx) == 5  # one batch
    counts = await _issue_counts(ctx)
    assert sorted(counts.values()) == [(2, 1), (3, 2)]

    # A user seen before on the issue is not counted again; a new one is.
    await send_events(client, project, _crash("cart", "u2"), _crash("cart", "u4"))
    await process(ctx)
    cart = next(v for k, v in (await _issue_counts(ctx)).items() if "cart" in k)
    assert cart == (5, 3)

    # Every stored event's payload is its own (ids are matched by event id, not by position).
    async with ctx.db.connect() as conn:
        rows = (await conn.execute(select(events.c.event_id, event_data.c.data).join(event_data))).all()
    assert len(rows) == 7
    assert all(r.data["event_id"] == r.event_id for r in rows)


async def test_a_restart_digests_what_the_previous_process_left_at_once(ctx: Context) -> None:
    """Envelopes acknowledged by a process that stopped before digesting them get a digest
    job as soon as the next process starts, not at the next minute of the safety net."""
    async with ctx.db.transaction() as conn:
        project = await projects.create_project(conn, "Restart", public_base=ctx.settings.public_base)
    async for client in _client(ctx):
        await send_events(client, project, _crash("cart", "u1"), _crash("pay", "u2"))
        await asyncio.gather(*digest.digester(ctx).tasks)
    async with ctx.db.transaction() as conn:  # the process died with its job: nothing is queued
        await conn.execute(delete(jobs))

    async for _client_after_restart in _client(ctx):
        await asyncio.gather(*digest.digester(ctx).tasks)
        async with ctx.db.connect() as conn:
            queued = (await conn.execute(select(jobs.c.kind).where(jobs.c.status == "queued"))).scalars().all()
        assert queued == [digest.DIGEST_KIND]
        assert await process(ctx) == 2
        assert sorted(await _issue_counts(ctx)) == ["app.cart in handle_cart", "app.pay in handle_pay"]


async def test_a_start_with_nothing_left_queues_no_digest(ctx: Context) -> None:
    async for _client_after_start in _client(ctx):
        await asyncio.gather(*digest.digester(ctx).tasks)
        async with ctx.db.connect() as conn:
            assert (await conn.execute(select(jobs.c.kind))).scalars().all() == []
