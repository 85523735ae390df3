"""Delivery: decide each due message again, hand the rest to their provider in batches,
record every outcome, and follow Expo tickets up with receipts.

Exactly-once toward the provider: a message leaves the ``PENDING`` states in the same
transaction that records the provider's answer, and a delivery job only picks up pending
messages, so a retried job never sends a message that was already accepted. (A crash
between the provider's answer and that commit can resend one batch — the same
"at least once" Expo, FCM and APNs themselves give.)
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core import alerts, audit, jobs
from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.core.jobs import RetryLater
from shipyard.push import credentials as creds_svc
from shipyard.push import devices as devices_svc
from shipyard.push.models import categories, devices, message_events, messages, sends, user_categories, users
from shipyard.push.policy import HOUR, Decision, Recent, decide, user_timezone
from shipyard.push.providers import Outgoing, ProviderCredentials, Result, apns, expo, fcm
from shipyard.push.sending import PENDING, queue_deliveries, wake_worker
from shipyard.push.texts import render
from shipyard.push.timing import local_day_start, zone

log = logging.getLogger("shipyard.push")

MAX_ATTEMPTS = 25
RECEIPT_MAX_AGE = timedelta(hours=24)
PAUSED_RETRY_SECONDS = 60.0
SENDERS = {"expo": expo.send, "fcm": fcm.send, "apns": apns.send}
COUNTED = ("sent", "delivered", "opened")

MESSAGES = Counter("shipyard_push_messages_total", "Push messages by provider and outcome", ["provider", "outcome"])
DECISIONS = Counter("shipyard_push_decisions_total", "Delivery-time decisions", ["action"])


def _event(m: dict[str, Any], event: str, details: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {"message_id": m["id"], "project_id": m["project_id"], "ts": now, "event": event, "details": details}


_DEVICE_COLUMNS = [c.label(f"device__{c.name}") for c in devices.c]


async def _load(conn: AsyncConnection, project_id: int, ids: list[str], now: datetime) -> dict[str, Any]:
    # One query for the messages, their devices and their sends' status: delivery runs once
    # per 100 messages, and each round trip costs as much CPU as the rows it returns.
    rows = await conn.execute(
        select(messages, sends.c.status.label("send__status"), *_DEVICE_COLUMNS)
        .select_from(
            messages.outerjoin(devices, devices.c.id == messages.c.device_id).outerjoin(
                sends, sends.c.id == messages.c.send_id
            )
        )
        .where(
            messages.c.id.in_(ids),
            messages.c.project_id == project_id,
            messages.c.status.in_(PENDING),
            messages.c.due_at <= now + timedelta(seconds=1),
        )
    )
    msgs: list[dict[str, Any]] = []
    device_map: dict[int, dict[str, Any]] = {}
    send_status: dict[int, str] = {}
    for r in rows:
        row = r._mapping
        msgs.append({c.name: row[c] for c in messages.c})
        if row["device__id"] is not None:
            device_map[row["device__id"]] = {c.name: row[f"device__{c.name}"] for c in devices.c}
        if row["send__status"] is not None:
            send_status[row[messages.c.send_id]] = row["send__status"]
    if not msgs:
        return {"messages": []}
    user_ids = {m["user_id"] for m in msgs if m["user_id"]}
    names = {m["category"] for m in msgs if m["category"]}  # only these matter to the decisions
    user_map: dict[str, dict[str, Any]] = {}
    overrides: dict[tuple[str, str], bool] = {}
    if user_ids:
        for r in await conn.execute(
            select(users).where(users.c.project_id == project_id, users.c.user_id.in_(user_ids))
        ):
            user_map[r.user_id] = dict(r._mapping)
    if user_ids and names:
        for r in await conn.execute(
            select(user_categories).where(
                user_categories.c.project_id == project_id,
                user_categories.c.user_id.in_(user_ids),
                user_categories.c.category.in_(names),
            )
        ):
            overrides[(r.user_id, r.category)] = r.enabled
    category_map: dict[str, dict[str, Any]] = {}
    if names:
        category_map = {
            r.name: dict(r._mapping)
            for r in await conn.execute(
                select(categories).where(categories.c.project_id == project_id, categories.c.name.in_(names))
            )
        }
    counts, day_starts = await _sent_recently(conn, project_id, msgs, user_map, device_map, category_map, now)
    return {
        "messages": msgs,
        "devices": device_map,
        "sends": send_status,
        "users": user_map,
        "overrides": overrides,
        "categories": category_map,
        "counts": counts,
        "day_starts": day_starts,
    }


SentKey = tuple[int, str, str | None]  # (send, occurrence, category): one notification to a user


def _capped(user: dict[str, Any] | None, category: dict[str, Any] | None) -> bool:
    keys = ("daily_cap", "hourly_cap", "category_caps")
    return any((user or {}).get(k) for k in keys) or any(
        (category or {}).get(k) is not None for k in ("daily_cap", "hourly_cap")
    )


async def _sent_recently(
    conn: AsyncConnection,
    project_id: int,
    msgs: list[dict[str, Any]],
    user_map: dict[str, dict[str, Any]],
    device_map: dict[int, dict[str, Any]],
    category_map: dict[str, dict[str, Any]],
    now: datetime,
) -> tuple[dict[str, dict[SentKey, datetime]], dict[str, datetime]]:
    """Per capped user: the notifications sent since local midnight or within the last hour
    (whichever began earlier), with when they went out; and each user's local midnight."""
    day_start: dict[str, datetime] = {}
    for m in msgs:
        uid = m["user_id"]
        if not uid or uid in day_start:
            continue
        user = user_map.get(uid)
        if _capped(user, category_map.get(m["category"] or "")):
            tz = zone(user_timezone(user, device_map.get(m["device_id"]) or {}))
            day_start[uid] = local_day_start(now, tz)
    sent: dict[str, dict[SentKey, datetime]] = defaultdict(dict)
    if not day_start:
        return sent, day_start
    since = min(min(day_start.values()), now - HOUR)
    rows = await conn.execute(
        select(messages.c.user_id, messages.c.send_id, messages.c.occurrence, messages.c.category, messages.c.sent_at)
        .where(
            messages.c.project_id == project_id,
            messages.c.user_id.in_(list(day_start)),
            messages.c.status.in_(COUNTED),
            messages.c.sent_at >= since,
        )
        .distinct()
    )
    for r in rows:
        if r.sent_at >= min(day_start[r.user_id], now - HOUR):
            key = (r.send_id, r.occurrence, r.category)
            first = sent[r.user_id].get(key)
            sent[r.user_id][key] = r.sent_at if first is None else min(first, r.sent_at)
    return sent, day_start


def _recent(seen: dict[SentKey, datetime], day_start: datetime | None, category: str | None, now: datetime) -> Recent:
    if day_start is None:
        return Recent()
    hour_ago = now - HOUR
    today = [(k, t) for k, t in seen.items() if t >= day_start]
    recent_all = sorted((t, k[2]) for k, t in seen.items() if t > hour_ago)
    return Recent(
        today=len(today),
        today_in_category=sum(1 for k, _ in today if k[2] == category),
        last_hour=tuple(t for t, _ in recent_all),
        last_hour_in_category=tuple(t for t, c in recent_all if c == category),
    )


def _decide_all(state: dict[str, Any], now: datetime) -> list[tuple[dict[str, Any], Decision]]:
    counts: dict[str, dict[SentKey, datetime]] = state["counts"]
    day_starts: dict[str, datetime] = state["day_starts"]
    out = []
    for m in state["messages"]:
        uid = m["user_id"]
        seen = counts.get(uid, {}) if uid else {}
        key = (m["send_id"], m["occurrence"], m["category"])
        already_counted = key in seen  # another device of the same user got this notification
        decision = decide(
            message=m,
            device=state["devices"].get(m["device_id"]),
            send_status=state["sends"].get(m["send_id"], "cancelled"),
            user=state["users"].get(uid) if uid else None,
            category=state["categories"].get(m["category"] or ""),
            category_enabled=state["overrides"].get((uid, m["category"])) if uid else None,
            recent=Recent() if already_counted else _recent(seen, day_starts.get(uid or ""), m["category"], now),
            now=now,
        )
        if decision.action == "send" and uid and uid in day_starts:
            counts.setdefault(uid, {}).setdefault(key, now)
        DECISIONS.labels(decision.action).inc()
        out.append((m, decision))
    return out


def _outgoing(m: dict[str, Any], device: dict[str, Any], category: dict[str, Any] | None) -> Outgoing:
    payload = dict(m["payload"])
    if m["status"] == "digesting" and m["digest_count"] > 1:
        variables = {"count": m["digest_count"], "category": m["category"]}
        title = (category or {}).get("digest_title")
        body = (category or {}).get("digest_body") or "{count} new notifications"
        payload["title"] = render(title, variables) if title else payload.get("title")
        payload["body"] = render(body, variables)
        payload["data"] = {**(payload.get("data") or {}), "digest_count": m["digest_count"]}
    registered = device["updated_at"].timestamp() if device.get("updated_at") else 0.0
    return Outgoing(m["id"], device["token"], device["environment"], payload, registered)


async def deliver(ctx: Context, project_id: int, ids: list[str]) -> None:
    """The ``push.deliver`` job: one batch of due messages."""
    now = utcnow()
    async with ctx.db.connect() as conn:
        state = await _load(conn, project_id, ids, now)
        if not state["messages"]:
            return
        decided = _decide_all(state, now)
        by_provider: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for m, d in decided:
            if d.action == "send":
                by_provider[m["provider"]].append(m)
        loaded: dict[str, ProviderCredentials | None] = {
            p: await creds_svc.load(conn, ctx, project_id, p) for p in by_provider
        }
    await _record_decisions(ctx, project_id, [(m, d) for m, d in decided if d.action != "send"], now)
    paused = False
    for provider, batch in by_provider.items():
        creds = loaded[provider]
        if creds is None or creds.paused_reason:
            paused = True
            if creds is None:
                await _credentials_problem(ctx, project_id, provider, f"no {provider} credentials are configured")
            continue
        items = [
            _outgoing(m, state["devices"][m["device_id"]], state["categories"].get(m["category"] or "")) for m in batch
        ]
        results = await SENDERS[provider](ctx, project_id, creds, items)
        if any(r.outcome == "credentials" for r in results):
            paused = True
        await _record_results(ctx, project_id, provider, {m["id"]: m for m in batch}, results)
    wake_worker(ctx)
    if paused:
        raise RetryLater(PAUSED_RETRY_SECONDS, "provider paused: credentials need attention")


async def _record_decisions(
    ctx: Context, project_id: int, decided: list[tuple[dict[str, Any], Decision]], now: datetime
) -> None:
    if not decided:
        return
    events = []
    deferred = []
    async with ctx.db.transaction() as conn:
        for m, d in decided:
            status = {"defer": "deferred", "suppress": "suppressed", "cancel": "cancelled", "fail": "failed"}[d.action]
            values: dict[str, Any] = {"status": status, "reason": d.reason}
            if d.action == "defer" and d.until is not None:
                values["due_at"] = d.until
                deferred.append({**m, "due_at": d.until})
            if d.action == "fail":
                values["failed_at"] = now
            await conn.execute(update(messages).where(messages.c.id == m["id"]).values(**values))
            details: dict[str, Any] = {"reason": d.reason}
            if d.until is not None:
                details["until"] = d.until.isoformat()
            events.append(_event(m, status, details, now))
        await conn.execute(message_events.insert(), events)
        await queue_deliveries(conn, ctx, project_id, deferred)


def _retry_delay(result: Result, attempts: int) -> float:
    if result.retry_after is not None:
        return max(0.2, result.retry_after) + random.uniform(0, 0.5)
    return jobs.backoff_seconds(attempts, base=2.0, cap=1800.0)


async def _record_results(
    ctx: Context, project_id: int, provider: str, batch: dict[str, dict[str, Any]], results: list[Result]
) -> None:
    now = utcnow()
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    events = []
    dead_devices: dict[int, str] = {}
    retries: dict[float, list[str]] = defaultdict(list)
    tickets = []
    credential_reason = None
    for r in results:
        m = batch[r.id]
        MESSAGES.labels(provider, r.outcome).inc()
        attempts = m["attempts"] + (1 if r.count_attempt else 0)
        if r.outcome == "sent":
            rows["sent"].append({"_id": r.id, "ticket": r.ticket_id, "attempts": attempts})
            if r.ticket_id:
                tickets.append(r.ticket_id)
        elif r.outcome == "delivered":
            rows["delivered"].append({"_id": r.id, "ticket": r.ticket_id, "attempts": attempts})
        elif r.outcome in ("dead", "failed") or (r.outcome == "retry" and attempts >= MAX_ATTEMPTS):
            reason = r.reason if r.outcome != "retry" else f"gave up after {attempts} attempts: {r.reason}"
            rows["failed"].append({"_id": r.id, "reason": reason, "attempts": attempts})
            events.append(_event(m, "failed", {"reason": reason, "provider": provider}, now))
            if r.outcome == "dead":
                dead_devices[m["device_id"]] = r.reason or "dead token"
        elif r.outcome == "retry":
            delay = _retry_delay(r, attempts)
            rows["retry"].append(
                {"_id": r.id, "reason": r.reason, "attempts": attempts, "due": now + timedelta(seconds=delay)}
            )
            retries[round(delay, 1)].append(r.id)
            events.append(_event(m, "retry", {"reason": r.reason, "in_seconds": round(delay, 1)}, now))
        else:  # credentials: stays queued until the provider is resumed
            credential_reason = r.reason
            events.append(_event(m, "paused", {"reason": r.reason, "provider": provider}, now))
    async with ctx.db.transaction() as conn:
        await _apply_rows(conn, rows, now)
        if events:
            await conn.execute(message_events.insert(), events)
        for delay, ids in retries.items():
            for start in range(0, len(ids), 100):
                await jobs.enqueue(
                    conn,
                    "push.deliver",
                    {"project_id": project_id, "ids": ids[start : start + 100]},
                    run_at=now + timedelta(seconds=delay),
                    priority=30,
                    project_id=project_id,
                    max_attempts=20,
                )
        if tickets:
            await jobs.enqueue(
                conn,
                "push.receipts",
                {"project_id": project_id, "tickets": tickets},
                run_at=now + timedelta(seconds=ctx.settings.push_receipt_delay_seconds),
                priority=60,
                idempotency_key=f"push.receipts:{tickets[0]}",
                project_id=project_id,
                max_attempts=50,
            )
        await _deactivate(conn, ctx, project_id, dead_devices)
        if credential_reason:
            await _pause(conn, ctx, project_id, provider, credential_reason)


async def _apply_rows(conn: AsyncConnection, rows: dict[str, list[dict[str, Any]]], now: datetime) -> None:
    by_id = messages.c.id == bindparam("_id")
    if rows["sent"]:
        await conn.execute(
            update(messages)
            .where(by_id)
            .values(
                status="sent", sent_at=now, reason=None, ticket_id=bindparam("ticket"), attempts=bindparam("attempts")
            ),
            rows["sent"],
        )
    if rows["delivered"]:
        await conn.execute(
            update(messages)
            .where(by_id)
            .values(
                status="delivered",
                sent_at=now,
                delivered_at=now,
                reason=None,
                ticket_id=bindparam("ticket"),
                attempts=bindparam("attempts"),
            ),
            rows["delivered"],
        )
    if rows["failed"]:
        await conn.execute(
            update(messages)
            .where(by_id)
            .values(status="failed", failed_at=now, reason=bindparam("reason"), attempts=bindparam("attempts")),
            rows["failed"],
        )
    if rows["retry"]:
        await conn.execute(
            update(messages)
            .where(by_id)
            .values(
                status="queued", reason=bindparam("reason"), attempts=bindparam("attempts"), due_at=bindparam("due")
            ),
            rows["retry"],
        )


async def _deactivate(conn: AsyncConnection, ctx: Context, project_id: int, dead: dict[int, str]) -> None:
    for device_id, reason in dead.items():
        if await devices_svc.deactivate(conn, [device_id], f"provider: {reason}"):
            await audit.record(
                conn,
                ctx,
                audit.Actor.system("push"),
                "push.device.deactivate",
                project_id=project_id,
                resource_type="push_device",
                resource_id=device_id,
                details={"reason": reason},
            )


async def _pause(conn: AsyncConnection, ctx: Context, project_id: int, provider: str, reason: str) -> None:
    await creds_svc.pause(conn, project_id, provider, reason)
    await alerts.raise_alert(
        conn,
        ctx,
        project_id=project_id,
        source="push",
        dedup_key=f"push:credentials:{provider}",
        severity="critical",
        summary=f"{provider} rejected this project's push credentials; delivery through it is paused",
        details={"provider": provider, "reason": reason},
        link=f"{ctx.settings.public_base}/projects/{project_id}/push",
    )
    await audit.record(
        conn,
        ctx,
        audit.Actor.system("push"),
        "push.provider.pause",
        project_id=project_id,
        resource_type="push_provider",
        resource_id=provider,
        details={"reason": reason},
    )


async def _credentials_problem(ctx: Context, project_id: int, provider: str, reason: str) -> None:
    async with ctx.db.transaction() as conn:
        await _pause(conn, ctx, project_id, provider, reason)


# --- receipts --------------------------------------------------------------------------------


async def check_receipts(ctx: Context, project_id: int, tickets: list[str]) -> None:
    """The ``push.receipts`` job: settle Expo tickets as delivered or failed."""
    now = utcnow()
    async with ctx.db.connect() as conn:
        rows = [
            dict(r._mapping)
            for r in await conn.execute(
                select(messages).where(
                    messages.c.project_id == project_id,
                    messages.c.ticket_id.in_(tickets),
                    messages.c.status == "sent",
                )
            )
        ]
        creds = await creds_svc.load(conn, ctx, project_id, "expo")
    if not rows or creds is None:
        return
    try:
        found = await expo.receipts(ctx, project_id, creds, [r["ticket_id"] for r in rows])
    except expo.ReceiptsUnavailable as exc:
        raise RetryLater(exc.retry_after or 60.0, f"receipts unavailable: {exc}") from None
    results: list[Result] = []
    waiting = 0
    credential_reason: str | None = None
    for m in rows:
        receipt = found.get(m["ticket_id"])
        if receipt is None:
            if m["sent_at"] and now - m["sent_at"] < RECEIPT_MAX_AGE:
                waiting += 1
            continue
        if receipt.get("status") == "ok":
            results.append(Result(m["id"], "delivered", ticket_id=m["ticket_id"]))
            continue
        detail = (receipt.get("details") or {}).get("error")
        reason = f"{detail or 'error'}: {receipt.get('message', '')}"
        outcome = expo.classify_error(detail, reason)
        if outcome == "credentials":  # not delivered: send again once the credentials are fixed
            credential_reason = reason
            results.append(Result(m["id"], "retry", reason, retry_after=PAUSED_RETRY_SECONDS, count_attempt=False))
        else:
            results.append(Result(m["id"], outcome, reason))
    batch = {m["id"]: {**m, "attempts": m["attempts"]} for m in rows}
    delivered = [r for r in results if r.outcome == "delivered"]
    async with ctx.db.transaction() as conn:
        if delivered:
            await conn.execute(
                update(messages)
                .where(messages.c.id == bindparam("_id"), messages.c.status == "sent")
                .values(status="delivered", delivered_at=now),
                [{"_id": r.id} for r in delivered],
            )
    others = [r for r in results if r.outcome != "delivered"]
    if others:
        await _record_results(ctx, project_id, "expo", batch, others)
    MESSAGES.labels("expo", "receipt_ok").inc(len(delivered))
    if credential_reason:
        await _credentials_problem(ctx, project_id, "expo", credential_reason)
    if waiting:
        raise RetryLater(min(300.0, max(1.0, ctx.settings.push_receipt_delay_seconds / 3)), "receipts not ready yet")
