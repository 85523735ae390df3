"""Event-driven notifications (task 2.2): the app's backend posts domain events such as
``plant_care.due`` or ``community.comment_created``; per-project rules turn each into a
templated send — which user (an event property), which category and template, which
delay, which digest window, and which deep-link route (parameters from the event).

Each rule's send is an ordinary send (source ``event``) with an idempotency key derived
from the event's key, so an event posted twice notifies once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.context import Context
from shipyard.core.db import insert_ignore, upsert, utcnow
from shipyard.core.errors import BadRequest, NotFound
from shipyard.push import links, prefs, sending, texts
from shipyard.push.models import events, rules
from shipyard.push.schemas import Schedule, SendRequest, Target

RULE_KEYS = (
    "name",
    "event",
    "recipient_field",
    "category",
    "template",
    "delay_seconds",
    "digest_window_seconds",
    "deep_link_route",
    "enabled",
    "created_at",
    "updated_at",
)


def rule_view(row: Any) -> dict[str, Any]:
    m = dict(row._mapping) if hasattr(row, "_mapping") else dict(row)
    return {k: m.get(k) for k in RULE_KEYS}


async def put_rule(conn: AsyncConnection, project_id: int, name: str, body: dict[str, Any]) -> dict[str, Any]:
    if not name or len(name) > 100:
        raise BadRequest("a rule name is 1–100 characters")
    await texts.get_template(conn, project_id, body["template"])  # 404 when unknown
    if body.get("category") and body["category"] not in await prefs.category_map(conn, project_id):
        raise BadRequest(f"unknown category {body['category']!r}; define it first")
    if body.get("deep_link_route") and body["deep_link_route"] not in {
        r["name"] for r in await links.list_routes(conn, project_id)
    }:
        raise BadRequest(f"unknown deep-link route {body['deep_link_route']!r}; define it first")
    now = utcnow()
    values = {**body, "project_id": project_id, "name": name, "created_at": now, "updated_at": now}
    await conn.execute(
        upsert(
            conn,
            rules,
            values,
            conflict_columns=["project_id", "name"],
            update={k: v for k, v in values.items() if k not in ("project_id", "name", "created_at")},
        )
    )
    row = (await conn.execute(select(rules).where(rules.c.project_id == project_id, rules.c.name == name))).one()
    return rule_view(row)


async def list_rules(conn: AsyncConnection, project_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(select(rules).where(rules.c.project_id == project_id).order_by(rules.c.name))
    return [rule_view(r) for r in rows]


async def delete_rule(conn: AsyncConnection, project_id: int, name: str) -> None:
    result = await conn.execute(delete(rules).where(rules.c.project_id == project_id, rules.c.name == name))
    if not result.rowcount:
        raise NotFound("rule")


async def handle_event(
    conn: AsyncConnection,
    ctx: Context,
    project_id: int,
    event: str,
    properties: dict[str, Any],
    idempotency_key: str | None = None,
    *,
    created_by: str | None = None,
) -> dict[str, Any]:
    """Apply every enabled rule for ``event``. Returns the sends created and, per rule that
    did not fire, why. A repeated idempotency key returns the first answer."""
    if idempotency_key:
        seen = (
            await conn.execute(
                select(events).where(events.c.project_id == project_id, events.c.idempotency_key == idempotency_key)
            )
        ).first()
        if seen is not None:
            return {"event_id": seen.id, "sends": seen.send_ids, "skipped": [], "duplicate": True}
    matching = (
        await conn.execute(
            select(rules).where(rules.c.project_id == project_id, rules.c.event == event, rules.c.enabled)
        )
    ).all()
    now = utcnow()
    inserted = await conn.execute(
        insert_ignore(
            conn,
            events,
            {
                "project_id": project_id,
                "event": event,
                "idempotency_key": idempotency_key,
                "properties": properties,
                "send_ids": [],
                "received_at": now,
            },
            conflict_columns=["project_id", "idempotency_key"],
        ).returning(events.c.id)
    )
    event_id = inserted.scalar()
    created: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for rule in matching:
        recipient = properties.get(rule.recipient_field)
        if recipient in (None, ""):
            skipped.append({"rule": rule.name, "reason": f"the event has no {rule.recipient_field!r} property"})
            continue
        extra: dict[str, Any] = {}
        if rule.digest_window_seconds:
            extra["digest_window_seconds"] = rule.digest_window_seconds
        deep_link = None
        if rule.deep_link_route:
            try:
                link = await links.generate(
                    conn, ctx, project_id, rule.deep_link_route, properties, campaign=f"rule:{rule.name}"
                )
                deep_link = link["url"]
            except BadRequest as exc:
                skipped.append({"rule": rule.name, "reason": exc.message})
                continue
        schedule = Schedule()
        if rule.delay_seconds:
            schedule = Schedule(trigger="scheduled", scheduled_time=now + timedelta(seconds=rule.delay_seconds))
        req = SendRequest(
            to=Target(user_ids=[str(recipient)]),
            template=rule.template,
            variables=properties,
            schedule=schedule,
            idempotency_key=f"event:{idempotency_key}:{rule.name}" if idempotency_key else None,
            campaign=f"rule:{rule.name}",
        )
        if rule.category:
            extra["category"] = rule.category
        if deep_link:
            extra["deep_link"] = deep_link
        try:
            send, _ = await sending.create_send(
                conn, ctx, project_id, req, source="event", created_by=created_by, extra=extra
            )
        except BadRequest as exc:
            skipped.append({"rule": rule.name, "reason": exc.message})
            continue
        created.append({"rule": rule.name, "send_id": send["id"], "user_id": str(recipient), "deep_link": deep_link})
    if event_id is not None:
        await conn.execute(
            events.update().where(events.c.id == event_id).values(send_ids=[c["send_id"] for c in created])
        )
    return {"event_id": event_id, "sends": [c["send_id"] for c in created], "created": created, "skipped": skipped}
