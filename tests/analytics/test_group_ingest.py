"""Concurrent batches share one group commit: each table is written once for the whole
group, yet every request still learns its own outcome (stored, duplicates) and identity
work from different requests adds up, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import func, select

from shipyard.analytics.models import aliases, groups, ingest_counters, users
from shipyard.core.context import Context
from tests.analytics.helpers import basic, stored, track


async def test_concurrent_batches_with_repeated_message_ids_store_and_count_each_duplicate_once(
    any_client: httpx.AsyncClient, any_ctx: Context, any_project: dict[str, Any]
) -> None:
    headers = basic(any_project["write_key"])
    shared = [track("post_liked", f"u{i}", messageId=f"shared-{i}") for i in range(5)]
    # Twenty requests at once: each carries its own messages plus the same five shared ones,
    # as SDK retries racing the original would.
    batches = [[*(track("post_created", f"u{r}") for _ in range(10)), *shared] for r in range(20)]
    responses = await asyncio.gather(
        *(any_client.post("/v1/batch", json={"batch": batch}, headers=headers) for batch in batches)
    )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    # Like Segment, the answer does not report duplicates: they are dropped when the
    # landing table is loaded, and counted there.
    assert all(r.json() == {"success": True} for r in responses)
    rows = await stored(any_ctx, any_project["id"])
    assert len(rows) == 20 * 10 + 5
    assert sorted(row.message_id for row in rows if row.message_id.startswith("shared-")) == [
        f"shared-{i}" for i in range(5)
    ]
    async with any_ctx.db.connect() as conn:
        counted = (
            await conn.execute(
                select(func.sum(ingest_counters.c.count)).where(
                    ingest_counters.c.project_id == any_project["id"], ingest_counters.c.outcome == "duplicate"
                )
            )
        ).scalar()
    assert counted == 19 * 5


async def test_concurrent_identifies_and_logins_add_up(
    any_client: httpx.AsyncClient, any_ctx: Context, any_project: dict[str, Any]
) -> None:
    headers = basic(any_project["write_key"])
    traits = ["language", "tier", "plant_count", "experience"]
    batches = [
        [
            {
                "type": "identify",
                "userId": "grower-1",
                "anonymousId": f"device-{i}",
                "messageId": f"id-{i}",
                "traits": {traits[i]: f"value-{i}"},
                "context": {"device": {"model": f"Pixel {i}"}},
            },
            track("plant_created", None, anonymous_id=f"lonely-{i}"),
        ]
        for i in range(len(traits))
    ]
    responses = await asyncio.gather(
        *(any_client.post("/v1/batch", json={"batch": batch}, headers=headers) for batch in batches)
    )
    assert all(r.status_code == 200 for r in responses)
    async with any_ctx.db.connect() as conn:
        user = (
            await conn.execute(
                select(users).where(users.c.project_id == any_project["id"], users.c.user_key == "grower-1")
            )
        ).one()
        linked = dict(
            (
                await conn.execute(
                    select(aliases.c.alias, aliases.c.user_key).where(aliases.c.project_id == any_project["id"])
                )
            )
            .tuples()
            .all()
        )
    # Every request's traits are on the one user, whichever order the group applied them in.
    assert user.traits == {name: f"value-{i}" for i, name in enumerate(traits)}
    assert user.identified
    assert user.device["device"]["model"].startswith("Pixel ")
    assert linked == {f"device-{i}": "grower-1" for i in range(len(traits))}
    # An anonymous-only device that was never linked keeps its own history.
    rows = await stored(any_ctx, any_project["id"])
    assert sorted(row.user_key for row in rows if row.event == "plant_created") == [
        f"lonely-{i}" for i in range(len(traits))
    ]


async def test_identifies_and_group_calls_in_groups_committed_side_by_side_lose_nothing(
    any_client: httpx.AsyncClient, any_ctx: Context, any_project: dict[str, Any]
) -> None:
    """On PostgreSQL several group commits are in flight at once, so traits are merged by
    the database (a read-then-write of the trait dict would keep only one group's keys)."""
    headers = basic(any_project["write_key"])

    async def send(i: int) -> httpx.Response:
        await asyncio.sleep(0.003 * i)  # requests arriving one after another, not in one group
        batch = [
            {"type": "identify", "userId": "grower-1", "messageId": f"i-{i}", "traits": {f"trait_{i}": i}},
            {"type": "group", "userId": "grower-1", "groupId": "club", "messageId": f"g-{i}", "traits": {f"g_{i}": i}},
        ]
        return await any_client.post("/v1/batch", json={"batch": batch}, headers=headers)

    responses = await asyncio.gather(*(send(i) for i in range(24)))
    assert all(r.status_code == 200 for r in responses)
    async with any_ctx.db.connect() as conn:
        user = (
            await conn.execute(
                select(users).where(users.c.project_id == any_project["id"], users.c.user_key == "grower-1")
            )
        ).one()
        club = (
            await conn.execute(
                select(groups.c.traits).where(groups.c.project_id == any_project["id"], groups.c.group_id == "club")
            )
        ).scalar_one()
    assert user.traits == {f"trait_{i}": i for i in range(24)}
    assert club == {f"g_{i}": i for i in range(24)}
