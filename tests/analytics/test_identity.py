"""Identify traits, anonymous→identified merges, alias, groups, and the user profile."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select

from shipyard.analytics import rollups, service
from shipyard.analytics.models import daily_users, group_members, groups
from shipyard.core.context import Context
from tests.analytics.helpers import basic, stored, track

CONTEXT = {
    "app": {"name": "CanaBro", "version": "1.4.2", "build": "142"},
    "device": {"manufacturer": "Apple", "model": "iPhone15,2", "advertisingId": "ad-1"},
    "os": {"name": "iOS", "version": "17.4"},
    "locale": "de-DE",
    "timezone": "Europe/Berlin",
}


async def _send(client: httpx.AsyncClient, project: dict[str, Any], *batch: dict[str, Any]) -> None:
    r = await client.post("/v1/batch", json={"batch": list(batch)}, headers=basic(project["write_key"]))
    assert r.status_code == 200, r.text


async def test_identify_sets_user_properties_and_device(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    traits = {
        "growingExperience": "beginner",
        "plantCount": 3,
        "subscriptionTier": "free",
        "preferredLanguage": "de",
    }
    await _send(client, project, {"type": "identify", "userId": "grower-1", "traits": traits, "context": CONTEXT})
    await _send(client, project, {"type": "identify", "userId": "grower-1", "traits": {"plantCount": 4}})
    async with ctx.db.connect() as conn:
        profile = await service.user_profile(conn, project["id"], "grower-1")
    assert profile["traits"] == {**traits, "plantCount": 4}
    assert profile["identified"] is True
    assert profile["device"]["os"] == {"name": "iOS", "version": "17.4"}
    assert profile["device"]["app"]["version"] == "1.4.2"
    assert "advertisingId" not in profile["device"]["device"]
    assert profile["device"]["locale"] == "de-DE"


async def test_anonymous_history_joins_the_user_on_identify(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    anon = "anon-device-1"
    await _send(
        client,
        project,
        track("strain_searched", None, anonymous_id=anon),
        {"type": "screen", "name": "Onboarding", "anonymousId": anon},
    )
    await rollups.run_rollup(ctx)  # the anonymous user's day is already rolled up
    await _send(
        client,
        project,
        {"type": "identify", "userId": "grower-2", "anonymousId": anon, "traits": {"plantCount": 1}},
        track("plant_created", "grower-2", anonymous_id=anon),
    )
    # After logout the SDK keeps the anonymous id; events without userId still belong to the user.
    await _send(client, project, track("calendar_viewed", None, anonymous_id=anon))
    rows = await stored(ctx, project["id"])
    assert {row.user_key for row in rows} == {"grower-2"}
    await rollups.run_rollup(ctx)
    async with ctx.db.connect() as conn:
        keys = (
            await conn.execute(select(daily_users.c.user_key).where(daily_users.c.project_id == project["id"]))
        ).all()
        profile = await service.user_profile(conn, project["id"], anon)  # looked up by the old id
    assert {k.user_key for k in keys} == {"grower-2"}
    assert profile["user_key"] == "grower-2"
    assert profile["aliases"] == [anon]
    assert profile["events"] == 5


async def test_alias_merges_previous_id(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> None:
    await _send(client, project, track("post_created", "temp-42"))
    r = await client.post(
        "/v1/alias", json={"previousId": "temp-42", "userId": "user-42"}, headers=basic(project["write_key"])
    )
    assert r.status_code == 200
    await _send(client, project, track("post_liked", "user-42"))
    rows = await stored(ctx, project["id"])
    assert [(row.event, row.user_key) for row in rows] == [
        ("post_created", "user-42"),
        ("$alias", "user-42"),
        ("post_liked", "user-42"),
    ]


async def test_first_link_wins_on_a_shared_device(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    await _send(client, project, track("a", None, anonymous_id="shared"), track("b", "alice", anonymous_id="shared"))
    await _send(client, project, track("c", "bob", anonymous_id="shared"))
    rows = await stored(ctx, project["id"])
    assert [(row.event, row.user_key) for row in rows] == [("a", "alice"), ("b", "alice"), ("c", "bob")]


async def test_link_made_by_another_process_is_caught_up_by_the_rollup(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    await _send(client, project, track("a", None, anonymous_id="anon-x"))  # caches "anon-x is not linked"
    from shipyard.analytics import identity

    async with ctx.db.transaction() as conn:  # what another node's ingest would do
        await identity.link(conn, project["id"], "anon-x", "user-x")
    await _send(client, project, track("b", None, anonymous_id="anon-x"))  # this node's cache is stale
    await rollups.run_rollup(ctx)
    assert {row.user_key for row in await stored(ctx, project["id"])} == {"user-x"}


async def test_group_call_records_group_and_membership(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    await _send(client, project, {"type": "group", "userId": "u1", "groupId": "club-7", "traits": {"name": "Growers"}})
    await _send(client, project, {"type": "group", "userId": "u2", "groupId": "club-7", "traits": {"plan": "team"}})
    async with ctx.db.connect() as conn:
        traits = (await conn.execute(select(groups.c.traits).where(groups.c.group_id == "club-7"))).scalar_one()
        members = (await conn.execute(select(group_members.c.user_key).order_by(group_members.c.user_key))).all()
    assert traits == {"name": "Growers", "plan": "team"}
    assert [m.user_key for m in members] == ["u1", "u2"]


async def test_unknown_user_profile_is_404(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> None:
    from shipyard.core.errors import NotFound

    async with ctx.db.connect() as conn:
        try:
            await service.user_profile(conn, project["id"], "nobody")
        except NotFound:
            pass
        else:
            raise AssertionError("expected NotFound")
