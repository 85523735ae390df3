"""Accepting sends and fanning them out into one message per device.

A send is stored with its schedule and a single ``push.fanout`` job (a bulk job per
send, not one per device) in the same transaction, so an accepted send is never lost.
The fan-out resolves the recipients, renders templates per locale, works out each
device's due time (its own timezone for local-time schedules), collapses digests, writes
the messages and queues one ``push.deliver`` job per provider batch.

Message ids are derived from (send, occurrence, device), so a fan-out that runs again
after a crash writes nothing twice and re-queues the same delivery jobs.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import and_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core import jobs
from shipyard.core.context import Context
from shipyard.core.db import insert_ignore, utcnow
from shipyard.core.errors import ApiError, BadRequest, Conflict, NotFound
from shipyard.push import devices as devices_svc
from shipyard.push import prefs, texts
from shipyard.push.models import devices, message_events, messages, sends, topic_subscriptions, users
from shipyard.push.schemas import SendRequest
from shipyard.push.timing import (
    EARLIEST_ZONE,
    TimingError,
    check_zone,
    fire_instant,
    local_to_utc,
    parse_hhmm,
    parse_recurrence,
    zone,
)

PENDING = ("queued", "scheduled", "deferred", "digesting")
INLINE_FANOUT_MAX = 1000  # named recipients of an immediate send fanned out while it is accepted
FINAL = ("sent", "delivered", "failed", "suppressed", "collapsed", "cancelled")
_NS = uuid.UUID("6f1d8a52-7a43-4b39-9a57-3c1f0c2b9e10")


def message_id(send_id: int, occurrence: str, device_id: int) -> str:
    return str(uuid.uuid5(_NS, f"{send_id}:{occurrence}:{device_id}"))


def wake_worker(ctx: Context) -> None:
    """Let this process's worker pick new jobs up now instead of at its next poll."""
    worker = ctx.extras.get("worker")
    if worker is not None:
        worker.wake()


# --- accepting a send --------------------------------------------------------------------------


def _plan(schedule: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Normalise the seed's NotificationSchedule into what the fan-out needs:
    ``kind`` immediate | at | local | recurring, and the first fan-out (instant, occurrence)."""
    trigger = schedule.get("trigger", "immediate")
    tz_name = schedule.get("timezone") or "UTC"
    try:
        if tz_name != "user":
            check_zone(tz_name)
        if trigger == "immediate":
            return {"kind": "immediate", "first_at": now, "occurrence": ""}
        if trigger == "scheduled":
            when: datetime | None = schedule.get("scheduled_time")
            if when is None:
                raise BadRequest("a scheduled send needs schedule.scheduled_time")
            if when.tzinfo is not None and tz_name == "UTC" and not schedule.get("timezone"):
                return {"kind": "at", "first_at": when.astimezone(UTC), "occurrence": ""}
            if when.tzinfo is not None:
                when = when.replace(tzinfo=None)  # a wall-clock time read in the given zone
            day, at = when.date(), when.time().replace(second=0, microsecond=0)
            plan = {"kind": "local", "timezone": tz_name, "date": day.isoformat(), "time": at.strftime("%H:%M")}
            return {**plan, "first_at": fire_instant(day, at, tz_name), "occurrence": day.isoformat()}
        pattern = schedule.get("recurring_pattern")
        if not pattern:
            raise BadRequest("a recurring send needs schedule.recurring_pattern")
        rec = parse_recurrence({k: (v.isoformat() if isinstance(v, date) else v) for k, v in pattern.items()})
        today = now.astimezone(EARLIEST_ZONE if tz_name == "user" else zone(tz_name)).date()
        first = rec.first_date(today)
        while first is not None and fire_instant(first, rec.at, tz_name) <= now:
            first = rec.next_date(first)
        if first is None:
            raise BadRequest("the recurring schedule has no occurrence before its end_date")
        return {
            "kind": "recurring",
            "timezone": tz_name,
            "recurring": {k: (v.isoformat() if isinstance(v, date) else v) for k, v in pattern.items()},
            "first_at": fire_instant(first, rec.at, tz_name),
            "occurrence": first.isoformat(),
        }
    except TimingError as exc:
        raise BadRequest(str(exc)) from None


def _request_hash(req: SendRequest) -> str:
    body = req.model_dump(mode="json", exclude={"idempotency_key"})
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def _validate(conn: AsyncConnection, project_id: int, req: SendRequest) -> dict[str, Any] | None:
    target = req.to
    if not (target.user_ids or target.device_ids or target.tokens or target.topics or target.segment or target.all):
        raise BadRequest("`to` names no recipients: give user_ids, device_ids, tokens, topics, segment or all")
    for topic in target.topics:
        devices_svc.check_topic(topic)
    payload = req.notification
    template = None
    if req.template:
        template = await texts.get_template(conn, project_id, req.template)
        missing = texts.missing_variables(template, req.variables)
        if missing:
            raise BadRequest(f"template {req.template!r} needs variables: {', '.join(missing)}")
    elif payload is None or not (payload.title or payload.body):
        raise BadRequest("give a notification with a title or body, or a template")
    category = (payload.category if payload else None) or (template or {}).get("category")
    if category:
        known = await prefs.category_map(conn, project_id)
        if category not in known:
            raise BadRequest(f"unknown category {category!r}; define it first (PUT …/push/categories/{category})")
    return template


async def create_send(
    conn: AsyncConnection,
    ctx: Context,
    project_id: int,
    req: SendRequest,
    *,
    source: str,
    created_by: str | None,
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Store a send and queue its first fan-out; returns (send, created). A repeated
    idempotency key returns the original send (or 409 when the request differs)."""
    request_hash = _request_hash(req)
    if req.idempotency_key:
        existing = (
            await conn.execute(
                select(sends).where(sends.c.project_id == project_id, sends.c.idempotency_key == req.idempotency_key)
            )
        ).first()
        if existing is not None:
            if existing.request_hash != request_hash:
                raise Conflict("this idempotency key was used for a different send")
            return dict(existing._mapping), False
    template = await _validate(conn, project_id, req)
    now = utcnow()
    plan = _plan(req.schedule.model_dump(), now)
    payload = req.notification.model_dump(exclude_none=True) if req.notification else {}
    payload.update(extra or {})
    category = payload.get("category") or (template or {}).get("category")
    status = {"immediate": "queued", "at": "scheduled", "local": "scheduled", "recurring": "recurring"}[plan["kind"]]
    values = {
        "project_id": project_id,
        "idempotency_key": req.idempotency_key,
        "request_hash": request_hash,
        "source": source,
        "campaign": req.campaign,
        "category": category,
        "template": req.template,
        "target": req.to.model_dump(exclude_defaults=True),
        "payload": payload,
        "variables": req.variables,
        "schedule": {k: v for k, v in plan.items() if k not in ("first_at", "occurrence")},
        "status": status,
        "recipients": 0,
        "occurrences": 0,
        "next_run_at": plan["first_at"],
        "created_by": created_by,
        "created_at": now,
    }
    stmt = insert_ignore(conn, sends, values, conflict_columns=["project_id", "idempotency_key"])
    send_id = (await conn.execute(stmt.returning(sends.c.id))).scalar()
    if send_id is None:  # a concurrent request with the same key won the race
        row = (
            await conn.execute(
                select(sends).where(sends.c.project_id == project_id, sends.c.idempotency_key == req.idempotency_key)
            )
        ).first()
        if row is None or row.request_hash != request_hash:
            raise Conflict("this idempotency key was used for a different send")
        return dict(row._mapping), False
    send = {**values, "id": int(send_id)}
    if fans_out_inline(req, plan["kind"]):
        count = await fanout_in(conn, ctx, send, plan["occurrence"])
        send.update(status="done", recipients=count, occurrences=1, next_run_at=None, finished_at=utcnow())
    else:
        await queue_fanout(conn, project_id, int(send_id), plan["occurrence"], plan["first_at"])
    return send, True


async def queue_fanout(conn: AsyncConnection, project_id: int, send_id: int, occurrence: str, at: datetime) -> None:
    await jobs.enqueue(
        conn,
        "push.fanout",
        {"send_id": send_id, "occurrence": occurrence},
        run_at=at,
        priority=20,
        idempotency_key=f"push.fanout:{send_id}:{occurrence}",
        project_id=project_id,
    )


async def get_send(conn: AsyncConnection, project_id: int, send_id: int) -> dict[str, Any]:
    row = (await conn.execute(select(sends).where(sends.c.project_id == project_id, sends.c.id == send_id))).first()
    if row is None:
        raise NotFound("send")
    return dict(row._mapping)


async def cancel_send(conn: AsyncConnection, project_id: int, send_id: int) -> tuple[dict[str, Any], int]:
    """Cancel a scheduled or recurring send (seed ``cancelNotification``): nothing not yet
    handed to a provider goes out. Returns the send and how many queued messages were dropped."""
    send = await get_send(conn, project_id, send_id)
    if send["status"] in ("cancelled", "failed"):
        raise ApiError(409, "conflict", f"the send is already {send['status']}")
    now = utcnow()
    await conn.execute(
        update(sends).where(sends.c.id == send_id).values(status="cancelled", cancelled_at=now, next_run_at=None)
    )
    result = await conn.execute(
        update(messages)
        .where(messages.c.send_id == send_id, messages.c.status.in_(PENDING))
        .values(status="cancelled", reason="send cancelled")
    )
    send.update(status="cancelled", cancelled_at=now, next_run_at=None)
    return send, int(result.rowcount or 0)


# --- recipients ---------------------------------------------------------------------------------


def _matches(properties: dict[str, Any], segment: dict[str, Any]) -> bool:
    for key, wanted in segment.items():
        value = properties.get(key)
        if isinstance(wanted, list):
            if value not in wanted:
                return False
        elif isinstance(wanted, dict):
            try:
                for op, bound in wanted.items():
                    ok = {
                        "gte": lambda v, b: v >= b,
                        "gt": lambda v, b: v > b,
                        "lte": lambda v, b: v <= b,
                        "lt": lambda v, b: v < b,
                        "ne": lambda v, b: v != b,
                        "exists": lambda v, b: (v is not None) == bool(b),
                    }[op](value, bound)
                    if not ok:
                        return False
            except (KeyError, TypeError):
                return False
        elif value != wanted:
            return False
    return True


def check_segment(segment: dict[str, Any]) -> None:
    ops = {"gte", "gt", "lte", "lt", "ne", "exists"}
    for key, wanted in segment.items():
        if isinstance(wanted, dict) and not set(wanted) <= ops:
            raise BadRequest(f"segment.{key}: operators are {', '.join(sorted(ops))}")


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def resolve_devices(conn: AsyncConnection, project_id: int, target: dict[str, Any]) -> list[Any]:
    """Active devices the target names (deduplicated, ordered by id)."""
    cols = [
        devices.c.id,
        devices.c.user_id,
        devices.c.provider,
        devices.c.locale,
        devices.c.timezone,
    ]
    base = select(*cols).where(devices.c.project_id == project_id, devices.c.active)
    found: dict[int, Any] = {}

    async def collect(stmt: Any) -> None:
        for row in await conn.execute(stmt):
            found[row.id] = row

    if target.get("all"):
        await collect(base)
    for chunk in _chunks(target.get("device_ids") or [], 500):
        await collect(base.where(devices.c.id.in_(chunk)))
    for chunk in _chunks(target.get("tokens") or [], 500):
        await collect(base.where(devices.c.token.in_(chunk)))
    user_ids = list(target.get("user_ids") or [])
    if target.get("segment"):
        rows = await conn.execute(select(users.c.user_id, users.c.properties).where(users.c.project_id == project_id))
        user_ids += [r.user_id for r in rows if _matches(r.properties or {}, target["segment"])]
    for chunk in _chunks(sorted(set(user_ids)), 500):
        await collect(base.where(devices.c.user_id.in_(chunk)))
    if target.get("topics"):
        subscribed = select(topic_subscriptions.c.device_id).where(
            topic_subscriptions.c.project_id == project_id, topic_subscriptions.c.topic.in_(target["topics"])
        )
        await collect(base.where(devices.c.id.in_(subscribed)))
    return [found[k] for k in sorted(found)]


# --- fan-out ----------------------------------------------------------------------------------


def _data_for(payload: dict[str, Any], mid: str) -> dict[str, Any]:
    data = dict(payload.get("data") or {})
    data["_sid"] = mid  # the app reports opens with it
    if payload.get("deep_link"):
        data.setdefault("url", payload["deep_link"])
    return data


async def fanout(ctx: Context, send_id: int, occurrence: str) -> dict[str, int]:
    """The ``push.fanout`` job: turn one occurrence of a send into messages and delivery jobs."""
    async with ctx.db.connect() as conn:
        row = (await conn.execute(select(sends).where(sends.c.id == send_id))).first()
        if row is None or row.status in ("cancelled", "failed"):
            return {"messages": 0}
        send = dict(row._mapping)
        targets = await _targets(conn, send)
    if len(targets.devices) > ctx.settings.push_max_recipients:
        async with ctx.db.transaction() as conn:
            await conn.execute(
                update(sends)
                .where(sends.c.id == send_id)
                .values(status="failed", error=f"{len(targets.devices)} recipients exceed push_max_recipients")
            )
        return {"messages": 0}
    rows, window = _message_rows(send, occurrence, targets, utcnow())
    chunks = _chunks(rows, 2000) or [[]]
    for index, chunk in enumerate(chunks):
        async with ctx.db.transaction() as conn:
            await _write_chunk(
                conn, ctx, send, occurrence, chunk, window, len(rows) if index == len(chunks) - 1 else None
            )
    wake_worker(ctx)
    return {"messages": len(rows)}


def fans_out_inline(req: SendRequest, kind: str) -> bool:
    """Immediate sends to a few named users, devices or tokens are fanned out while the send
    is accepted (in its transaction): one job hop and two write transactions fewer per send,
    which is most of the per-send overhead. Topics, segments and ``all`` can be large and
    go through the ``push.fanout`` job."""
    to = req.to
    named = len(to.user_ids) + len(to.device_ids) + len(to.tokens)
    return kind == "immediate" and not (to.topics or to.segment or to.all) and 0 < named <= INLINE_FANOUT_MAX


async def fanout_in(conn: AsyncConnection, ctx: Context, send: dict[str, Any], occurrence: str) -> int:
    """Fan a just-created send out inside the caller's transaction; returns the message count."""
    targets = await _targets(conn, send)
    limit = ctx.settings.push_max_recipients
    if len(targets.devices) > limit:  # refused before anything is stored (the job marks the send failed)
        raise BadRequest(f"{len(targets.devices)} recipients exceed push_max_recipients ({limit})")
    rows, window = _message_rows(send, occurrence, targets, utcnow())
    await _write_chunk(conn, ctx, send, occurrence, rows, window, len(rows))
    return len(rows)


@dataclass
class _Targets:
    devices: list[Any]
    template: dict[str, Any] | None
    categories: dict[str, dict[str, Any]]
    users: dict[str, Any]


async def _targets(conn: AsyncConnection, send: dict[str, Any]) -> _Targets:
    project_id = send["project_id"]
    targets = await resolve_devices(conn, project_id, send["target"])
    template = await texts.get_template(conn, project_id, send["template"]) if send["template"] else None
    # Only the send's own category is used; sends without one skip the query.
    categories = await prefs.category_map(conn, project_id) if send["category"] else {}
    user_rows = {}
    user_ids = sorted({d.user_id for d in targets if d.user_id})
    for chunk in _chunks(user_ids, 500):
        for u in await conn.execute(
            select(users.c.user_id, users.c.timezone, users.c.locale).where(
                users.c.project_id == project_id, users.c.user_id.in_(chunk)
            )
        ):
            user_rows[u.user_id] = u
    return _Targets(targets, template, categories, user_rows)


def _message_rows(
    send: dict[str, Any], occurrence: str, targets: _Targets, now: datetime
) -> tuple[list[dict[str, Any]], int | None]:
    """One message row per target device (text rendered in the device's locale, due at the
    occurrence's time in the user's timezone); and the category's digest window, if any."""
    send_id, project_id = send["id"], send["project_id"]
    schedule = send["schedule"]
    payload = send["payload"]
    category = send["category"]
    template = targets.template
    cat = targets.categories.get(category or "")
    window = payload.get("digest_window_seconds") or (cat or {}).get("digest_window_seconds")
    rows: list[dict[str, Any]] = []
    for device in targets.devices:
        mid = message_id(send_id, occurrence, device.id)
        user = targets.users.get(device.user_id)
        tz_name = (user.timezone if user else None) or device.timezone
        locale = device.locale or (user.locale if user else None)
        due = _due_at(schedule, occurrence, tz_name, now)
        if template is not None:
            title, body = texts.render_for(template, locale, send["variables"])
            data = {**template["data"], **(payload.get("data") or {})}
        else:
            title, body, data = payload.get("title"), payload.get("body"), payload.get("data") or {}
        rendered = {k: v for k, v in payload.items() if k not in ("title", "body", "data", "digest_window_seconds")}
        rendered.update(title=title, body=body, data=_data_for({**payload, "data": data}, mid))
        if cat and cat.get("channel_id") and not rendered.get("channel_id"):
            rendered["channel_id"] = cat["channel_id"]
        rows.append(
            {
                "id": mid,
                "project_id": project_id,
                "send_id": send_id,
                "occurrence": occurrence,
                "device_id": device.id,
                "user_id": device.user_id,
                "provider": device.provider,
                "category": category,
                "campaign": send["campaign"],
                "template": send["template"],
                "title": title,
                "body": body,
                "payload": rendered,
                "status": "queued" if due <= now else "scheduled",
                "reason": None,
                "due_at": max(due, now),
                "digest_key": category if window else None,
                "digest_count": 1,
                "digest_of": None,
                "ticket_id": None,
                "attempts": 0,
                "created_at": now,
            }
        )
    return rows, int(window) if window else None


async def _write_chunk(
    conn: AsyncConnection,
    ctx: Context,
    send: dict[str, Any],
    occurrence: str,
    chunk: list[dict[str, Any]],
    window: int | None,
    total: int | None,
) -> None:
    """Write one chunk of a fan-out; ``total`` on the last chunk: the send's bookkeeping
    commits with its last messages."""
    now = utcnow()
    if window:
        await _apply_digests(conn, chunk, window, now)
    await write_messages(conn, ctx, send["project_id"], chunk)
    if total is not None:
        await _after_fanout(conn, send, occurrence, total, now)


def _due_at(schedule: dict[str, Any], occurrence: str, tz_name: str | None, now: datetime) -> datetime:
    kind = schedule["kind"]
    if kind in ("immediate", "at"):
        return now
    at = parse_hhmm(schedule["recurring"]["time"] if kind == "recurring" else schedule["time"])
    day = date.fromisoformat(occurrence)
    tz = zone(tz_name) if schedule["timezone"] == "user" else zone(schedule["timezone"])
    return local_to_utc(day, at, tz)


async def _apply_digests(conn: AsyncConnection, rows: list[dict[str, Any]], window: int, now: datetime) -> None:
    """Collapse rows into an open digest for the same device and category, or open one."""
    device_ids = [r["device_id"] for r in rows]
    stored: dict[tuple[int, str], str] = {}
    for chunk in _chunks(device_ids, 500):
        for found in await conn.execute(
            select(messages.c.id, messages.c.device_id, messages.c.digest_key).where(
                messages.c.device_id.in_(chunk), messages.c.status == "digesting"
            )
        ):
            stored[(found.device_id, found.digest_key)] = found.id
    opened_here: dict[tuple[int, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["device_id"], row["digest_key"])
        if key in opened_here:
            leader = opened_here[key]
            leader["digest_count"] += 1
            row.update(status="collapsed", digest_of=leader["id"], reason=f"collapsed into digest {leader['id']}")
        elif key in stored and await _join_digest(conn, stored[key]):
            leader_id = stored[key]
            row.update(status="collapsed", digest_of=leader_id, reason=f"collapsed into digest {leader_id}")
        else:
            row.update(status="digesting", due_at=max(row["due_at"], now + timedelta(seconds=window)))
            opened_here[key] = row


async def _join_digest(conn: AsyncConnection, leader_id: str) -> bool:
    """Count one more notification into a stored digest, unless it went out meanwhile."""
    result = await conn.execute(
        update(messages)
        .where(messages.c.id == leader_id, messages.c.status == "digesting")
        .values(digest_count=messages.c.digest_count + 1)
    )
    return bool(result.rowcount)


async def write_messages(conn: AsyncConnection, ctx: Context, project_id: int, rows: list[dict[str, Any]]) -> None:
    """Insert messages (idempotently), their first history events, and their delivery jobs."""
    if not rows:
        return
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    await conn.execute(dialect_insert(messages).on_conflict_do_nothing(index_elements=["id"]), rows)
    events = []
    for r in rows:
        if r["status"] == "collapsed":
            events.append(_event(r, "collapsed", {"into": r["digest_of"], "category": r["category"]}))
        elif r["status"] == "digesting":
            events.append(_event(r, "digest_opened", {"until": r["due_at"].isoformat(), "category": r["category"]}))
        elif r["status"] == "scheduled":
            events.append(_event(r, "scheduled", {"for": r["due_at"].isoformat()}))
    if events:
        await conn.execute(message_events.insert(), events)
    await queue_deliveries(conn, ctx, project_id, [r for r in rows if r["status"] != "collapsed"])


def _event(row: dict[str, Any], event: str, details: dict[str, Any]) -> dict[str, Any]:
    return {
        "message_id": row["id"],
        "project_id": row["project_id"],
        "ts": utcnow(),
        "event": event,
        "details": details,
    }


async def queue_deliveries(conn: AsyncConnection, ctx: Context, project_id: int, rows: list[dict[str, Any]]) -> None:
    """One ``push.deliver`` job per (provider, due time) batch."""
    groups: dict[tuple[str, datetime], list[str]] = defaultdict(list)
    for r in rows:
        groups[(r["provider"], r["due_at"])].append(r["id"])
    size = max(1, min(ctx.settings.push_batch_size, 100))
    for (_provider, due), ids in groups.items():
        for chunk in _chunks(ids, size):
            await jobs.enqueue(
                conn,
                "push.deliver",
                {"project_id": project_id, "ids": chunk},
                run_at=due,
                priority=30,
                idempotency_key=f"push.deliver:{chunk[0]}:{len(chunk)}:{due.isoformat()}",
                project_id=project_id,
                max_attempts=20,
            )


async def _after_fanout(
    conn: AsyncConnection, send: dict[str, Any], occurrence: str, count: int, now: datetime
) -> None:
    schedule = send["schedule"]
    values: dict[str, Any] = {"recipients": sends.c.recipients + count, "occurrences": sends.c.occurrences + 1}
    next_at = None
    next_occurrence = None
    if schedule["kind"] == "recurring":
        rec = parse_recurrence(schedule["recurring"])
        day = rec.next_date(date.fromisoformat(occurrence))
        if day is not None:
            next_occurrence = day.isoformat()
            next_at = fire_instant(day, rec.at, schedule["timezone"])
    if next_at is None:
        values.update(status="done", finished_at=now, next_run_at=None)
    else:
        values.update(next_run_at=next_at)
    await conn.execute(
        update(sends).where(and_(sends.c.id == send["id"], sends.c.status != "cancelled")).values(**values)
    )
    if next_at is not None and next_occurrence is not None:
        current = (await conn.execute(select(sends.c.status).where(sends.c.id == send["id"]))).scalar()
        if current != "cancelled":
            await queue_fanout(conn, send["project_id"], send["id"], next_occurrence, next_at)
