"""The digester: turns stored envelopes into issues, events, transactions, release health.

It runs as the ``errors.digest`` job (started on demand by ingest, and every minute as a
safety net) and drains the queue in batches:

1. **claim** a batch of envelopes (a lease; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so
   several workers share the queue);
2. **prepare** each one outside any transaction: open, parse, scrub, normalise, group,
   put attachments in blob storage — the CPU-heavy part never holds the write lock;
3. **write** the whole batch in one short transaction that also deletes the envelopes
   it owns, so an envelope's effects are committed exactly when it leaves the queue.

A batch whose transaction fails is retried envelope by envelope; an envelope that still
fails is kept, marked failed with the error (visible in the API), never silently dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy import bindparam, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core import audit, jobs, projects
from shipyard.core.audit import Actor
from shipyard.core.blobs import blob_store
from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.errors import alerting, envelope, grouping, health, outcomes, releases
from shipyard.errors.config import ProjectConfig, project_config
from shipyard.errors.issues import IssueView, add_activity, apply_event
from shipyard.errors.models import (
    attachments,
    envelopes,
    event_data,
    events,
    feedback,
    issue_hourly,
    issue_tags,
    issue_users,
    issues,
    spans,
    transactions,
)
from shipyard.errors.normalize import (
    EventFacts,
    breakdown_tags,
    normalize,
    normalize_tags,
    obj,
    parse_timestamp,
    user_ident,
)
from shipyard.errors.scrub import Scrubber, scrub_event, scrub_string

log = logging.getLogger("shipyard.errors.digest")

DIGEST_KIND = "errors.digest"
MAX_ATTEMPTS = 5
MAX_SPANS = 1000
# After a part-filled batch the digester waits up to this long for a full one. A batch has a
# fixed cost (about 17 statements: ≈ 25 ms of CPU on SQLite, so 2.5 ms per envelope in a
# batch of 10 against 0.75 ms in one of 250), and a separate `shipyard worker`, which keeps
# up easily, took batches of a few dozen envelopes when this was 50 ms: that is why it cost
# more CPU per event than the embedded digester. In-process, it stops waiting as soon as a
# full batch has been stored.
LINGER_SECONDS = 0.25
SYSTEM = Actor.system("errors.digest")

PROCESSED = Counter("shipyard_errors_processed_total", "Envelope items processed by the digester", ["type"])
FAILED = Counter("shipyard_errors_envelopes_failed_total", "Envelopes the digester could not process")
BATCH_SECONDS = Histogram("shipyard_errors_digest_batch_seconds", "Time to process one digest batch")


# --- waking the digester ------------------------------------------------------------------------


class Digester:
    """Per-process: whether a digest loop runs here, and the event that wakes it."""

    def __init__(self) -> None:
        self.active = False
        self.wake = asyncio.Event()
        self.last_enqueue = 0.0
        self.tasks: set[asyncio.Task[None]] = set()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stored = 0  # envelopes this process stored since the digester's last claim
        self.wanted = 0  # while lingering: how many stored envelopes end the wait
        self.enough = asyncio.Event()

    async def linger(self, wanted: int, seconds: float) -> None:
        """Wait until ``wanted`` envelopes were stored here since the last claim, or ``seconds``."""
        if self.stored >= wanted:
            return
        self.wanted = wanted
        self.enough.clear()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.enough.wait(), timeout=seconds)
        finally:
            self.wanted = 0


def digester(ctx: Context) -> Digester:
    existing = ctx.extras.get("errors_digester")
    if existing is None:
        existing = ctx.extras["errors_digester"] = Digester()
    return existing


def kick(ctx: Context) -> None:
    """New envelopes are stored: wake the loop here, or start a digest job (at most once a second)."""
    d = digester(ctx)
    d.wake.set()
    d.stored += 1
    if d.wanted and d.stored >= d.wanted:
        d.enough.set()
    if d.active:
        return
    now = time.monotonic()
    if now - d.last_enqueue < 1.0:
        return
    d.last_enqueue = now
    task = asyncio.create_task(_enqueue(ctx))
    d.tasks.add(task)
    task.add_done_callback(d.tasks.discard)


def resume(ctx: Context) -> None:
    """At start: if envelopes are waiting (a previous process stopped or was killed before
    digesting what it acknowledged), start a digest job now rather than at the next minute
    of the safety-net schedule."""
    d = digester(ctx)
    task = asyncio.create_task(_resume(ctx))
    d.tasks.add(task)
    task.add_done_callback(d.tasks.discard)


async def _resume(ctx: Context) -> None:
    try:
        async with ctx.db.connect() as conn:
            waiting = (await conn.execute(select(envelopes.c.id).where(envelopes.c.failed.is_(False)).limit(1))).first()
    except Exception as exc:  # the every-minute schedule picks the envelopes up anyway
        log.warning("could not look for envelopes left to digest: %s", exc)
        return
    if waiting is not None:
        digester(ctx).last_enqueue = time.monotonic()
        await _enqueue(ctx)


async def _enqueue(ctx: Context) -> None:
    try:
        async with ctx.db.transaction() as conn:
            await jobs.enqueue(conn, DIGEST_KIND, {}, priority=20, idempotency_key=f"{DIGEST_KIND}:{int(time.time())}")
    except Exception as exc:  # the every-minute schedule picks the envelopes up anyway
        log.warning("could not start a digest job: %s", exc)
        return
    worker = ctx.extras.get("worker")
    if worker is not None:
        worker.wake()


async def drain(ctx: Context, *, idle_seconds: float | None = None) -> int:
    """Process until the queue has been empty for ``idle_seconds``; returns envelopes handled."""
    d = digester(ctx)
    idle = ctx.settings.errors_digest_idle_seconds if idle_seconds is None else idle_seconds
    handled = 0
    d.active = True
    try:
        deadline = time.monotonic() + idle
        while True:
            d.wake.clear()  # before looking, so an envelope stored meanwhile wakes us again
            d.stored = 0
            batch = ctx.settings.errors_digest_batch
            count = await process_batch(ctx, d.worker_id, batch)
            handled += count
            if count:
                deadline = time.monotonic() + idle
                if count < batch and idle > 0:
                    # A part-filled batch: let more envelopes arrive first (see LINGER_SECONDS):
                    # under a steady stream a little latency buys larger batches and leaves
                    # more CPU to the ingest path.
                    await d.linger(batch, min(LINGER_SECONDS, idle))
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(d.wake.wait(), timeout=min(0.5, remaining))
    finally:
        d.active = False  # no await since the last look: a kick after this starts a new job
    return handled


# --- claiming -------------------------------------------------------------------------------------


@dataclass
class Claimed:
    id: int
    project_id: int
    received_at: datetime
    client_ip: str | None
    body: bytes
    attempts: int


async def claim(ctx: Context, worker_id: str, limit: int) -> list[Claimed]:
    now = utcnow()
    candidates = (
        select(envelopes.c.id)
        .where(envelopes.c.failed.is_(False), or_(envelopes.c.claimed_until.is_(None), envelopes.c.claimed_until < now))
        .order_by(envelopes.c.id)
        .limit(limit)
    )
    if not ctx.db.is_sqlite:
        candidates = candidates.with_for_update(skip_locked=True)
    stmt = (
        update(envelopes)
        .where(envelopes.c.id.in_(candidates.scalar_subquery()))
        .values(
            claimed_by=worker_id,
            claimed_until=now + timedelta(seconds=ctx.settings.errors_claim_seconds),
            attempts=envelopes.c.attempts + 1,
        )
        .returning(
            envelopes.c.id,
            envelopes.c.project_id,
            envelopes.c.received_at,
            envelopes.c.client_ip,
            envelopes.c.body,
            envelopes.c.attempts,
        )
    )
    async with ctx.db.transaction() as conn:
        rows = (await conn.execute(stmt)).all()
    return sorted(
        (Claimed(r.id, r.project_id, r.received_at, r.client_ip, r.body, r.attempts) for r in rows), key=lambda c: c.id
    )


async def mark_failed(ctx: Context, envelope_id: int, worker_id: str, error: str) -> None:
    FAILED.inc()
    log.warning("envelope %s failed: %s", envelope_id, error)
    async with ctx.db.transaction() as conn:
        await conn.execute(
            update(envelopes)
            .where(envelopes.c.id == envelope_id, envelopes.c.claimed_by == worker_id)
            .values(failed=True, error=error[:4000], claimed_by=None, claimed_until=None)
        )


# --- preparing (no transaction) -------------------------------------------------------------------


@dataclass
class PreparedEvent:
    facts: EventFacts
    data: dict[str, Any]
    grouping: grouping.Grouping


@dataclass
class Prepared:
    id: int
    project_id: int
    received_at: datetime
    event: PreparedEvent | None = None
    transaction: dict[str, Any] | None = None
    spans: list[dict[str, Any]] = field(default_factory=list)
    sessions: list[health.SessionUpdate] = field(default_factory=list)
    aggregates: list[health.Aggregate] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[dict[str, Any]] = field(default_factory=list)
    discarded: list[tuple[str, str, int]] = field(default_factory=list)  # reason, category, quantity

    def releases(self) -> set[str]:
        found = {s.release for s in self.sessions} | {a.release for a in self.aggregates}
        if self.event and self.event.facts.release:
            found.add(self.event.facts.release)
        if self.transaction and self.transaction.get("release"):
            found.add(self.transaction["release"])
        return found


@lru_cache(maxsize=256)
def scrubber_for(cfg: ProjectConfig) -> Scrubber:
    """Scrubbers hold no state but their rules, so one per configuration serves every envelope."""
    return Scrubber(defaults=cfg.scrub_defaults, extra_fields=cfg.scrub_fields, safe_fields=cfg.safe_fields)


async def prepare(ctx: Context, row: Claimed, project: projects.Project) -> Prepared:
    from shipyard.errors.ingest import ingest_config, limits_of, sealer

    cfg, _rates = ingest_config(ctx, project)  # derived once per project object, not per envelope
    scrubber = scrubber_for(cfg)
    parsed = envelope.parse(sealer(ctx).open(row.body), limits_of(ctx))
    out = Prepared(row.id, row.project_id, row.received_at)
    for item in parsed.items:
        kind = item.type
        if kind == "event":
            data = scrub_event(item.parsed, scrubber, item.payload)
            facts = normalize(data, received_at=row.received_at, store_ip=cfg.store_ip, client_ip=row.client_ip)
            out.event = PreparedEvent(facts, data, grouping.group(data))
        elif kind == "transaction":
            out.transaction, out.spans = _prepare_transaction(item, row, cfg, scrubber)
        elif kind == "session":
            update_ = health.parse_session(row.project_id, item.parsed, row.received_at)
            if update_ is not None:
                out.sessions.append(update_)
        elif kind == "sessions":
            out.aggregates.extend(health.parse_aggregates(row.project_id, item.parsed, row.received_at))
        elif kind in ("user_report", "feedback"):
            entry = _prepare_feedback(kind, item.parsed, parsed.event_id)
            if entry is not None:
                out.feedback.append(entry)
        elif kind == "client_report":
            out.discarded.extend(_client_report(item.parsed))
        elif kind == "attachment" and cfg.store_attachments:
            out.attachments.append(await _store_attachment(ctx, item, parsed.event_id))
        PROCESSED.labels(kind).inc()
    return out


def _ms_between(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds() * 1000.0)


def _prepare_transaction(
    item: envelope.Item, row: Claimed, cfg: ProjectConfig, scrubber: Scrubber
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    data = scrub_event(item.parsed, scrubber, item.payload)
    end = parse_timestamp(data.get("timestamp"), row.received_at)
    start = parse_timestamp(data.get("start_timestamp"), end)
    contexts = obj(data.get("contexts"))
    trace = obj(contexts.get("trace"))
    tags = normalize_tags(data.get("tags"))
    ota = obj(contexts.get("ota_updates"))
    measurements: dict[str, Any] = {}
    for name, value in (data.get("measurements") or {}).items() if isinstance(data.get("measurements"), dict) else []:
        if isinstance(value, dict) and isinstance(value.get("value"), int | float):
            measurements[str(name)[:64]] = {"value": float(value["value"]), "unit": str(value.get("unit") or "")[:32]}
    user = obj(data.get("user"))
    if not cfg.store_ip:
        user.pop("ip_address", None)
    txn = {
        "project_id": row.project_id,
        "event_id": str(data["event_id"]),
        "trace_id": str(trace.get("trace_id") or "")[:32] or None,
        "span_id": str(trace.get("span_id") or "")[:16] or None,
        "name": str(data.get("transaction") or "<unnamed transaction>")[:500],
        "op": str(trace.get("op") or "")[:100] or None,
        "status": str(trace.get("status") or "")[:32] or None,
        "start_timestamp": start,
        "timestamp": end,
        "duration_ms": _ms_between(start, end),
        "release": str(data.get("release") or "")[:250] or None,
        "environment": str(data.get("environment") or "production")[:64],
        "update_id": (tags.get("expo.updates.update_id") or str(ota.get("update_id") or "") or None),
        "user_ident": user_ident(user),
        "measurements": measurements,
        "tags": tags,
        "received_at": row.received_at,
    }
    span_rows: list[dict[str, Any]] = []
    for span in (data.get("spans") or [])[:MAX_SPANS]:
        if not isinstance(span, dict) or not span.get("span_id"):
            continue
        span_start = parse_timestamp(span.get("start_timestamp"), start)
        span_end = parse_timestamp(span.get("timestamp"), span_start)
        span_rows.append(
            {
                "span_id": str(span["span_id"])[:16],
                "parent_span_id": str(span.get("parent_span_id") or "")[:16] or None,
                "op": str(span.get("op") or "")[:100] or None,
                "description": str(span.get("description") or "")[:1000] or None,
                "status": str(span.get("status") or "")[:32] or None,
                "start_timestamp": span_start,
                "duration_ms": _ms_between(span_start, span_end),
                "data": obj(span.get("data")),
            }
        )
    return txn, span_rows


def _prepare_feedback(kind: str, payload: dict[str, Any], envelope_event_id: str | None) -> dict[str, Any] | None:
    if kind == "user_report":
        comments = payload.get("comments")
        event_id = payload.get("event_id")
        name, email, url = payload.get("name"), payload.get("email"), None
    else:
        contexts = obj(payload.get("contexts"))
        fb = obj(contexts.get("feedback"))
        comments = fb.get("message")
        event_id = fb.get("associated_event_id")
        name, email, url = fb.get("name"), fb.get("contact_email"), fb.get("url")
    if not isinstance(comments, str) or not comments.strip():
        return None
    try:
        linked = envelope.normalize_event_id(event_id, "feedback") if event_id else None
    except envelope.EnvelopeError:
        linked = None
    return {
        "event_id": linked,
        "name": str(name)[:200] if name else None,
        "email": str(email)[:320] if email else None,
        "comments": scrub_string(comments)[:10_000],
        "url": str(url)[:1000] if url else None,
        "source": kind,
    }


def _client_report(payload: dict[str, Any]) -> list[tuple[str, str, int]]:
    out = []
    for key in ("discarded_events", "rate_limited_events", "filtered_events", "filtered_sampling_events"):
        for entry in payload.get(key) or []:
            if not isinstance(entry, dict):
                continue
            quantity = entry.get("quantity")
            if not isinstance(quantity, int) or quantity <= 0:
                continue
            reason = str(entry.get("reason") or key.removesuffix("_events"))
            out.append((reason, str(entry.get("category") or "default"), quantity))
    return out


async def _store_attachment(ctx: Context, item: envelope.Item, event_id: str | None) -> dict[str, Any]:
    key = await blob_store(ctx).put(item.payload)
    headers = item.headers
    return {
        "event_id": event_id,
        "filename": str(headers.get("filename") or "attachment")[:250],
        "content_type": str(headers.get("content_type") or "")[:100] or None,
        "attachment_type": str(headers.get("attachment_type") or "event.attachment")[:64],
        "size": len(item.payload),
        "blob_key": key,
    }


# --- writing (one transaction) --------------------------------------------------------------------


async def process_batch(ctx: Context, worker_id: str, limit: int | None = None) -> int:
    claimed = await claim(ctx, worker_id, limit or ctx.settings.errors_digest_batch)
    if not claimed:
        return 0
    started = time.perf_counter()
    project_cache: dict[int, projects.Project | None] = {}
    prepared: list[Prepared] = []
    for row in claimed:
        if row.attempts > MAX_ATTEMPTS:
            await mark_failed(ctx, row.id, worker_id, f"gave up after {MAX_ATTEMPTS} processing attempts")
            continue
        try:
            project = await _project(ctx, row.project_id, project_cache)
            if project is None:  # the project was deleted since: nothing to attach the data to
                await _delete_owned(ctx, [row.id], worker_id)
                continue
            prepared.append(await prepare(ctx, row, project))
        except Exception as exc:
            await mark_failed(ctx, row.id, worker_id, f"{type(exc).__name__}: {exc}")
    if prepared:
        try:
            async with ctx.db.transaction() as conn:
                await write(conn, ctx, prepared, worker_id, project_cache)
        except Exception as exc:
            log.warning("digest batch of %d failed (%s); retrying one by one", len(prepared), exc)
            for one in prepared:
                try:
                    async with ctx.db.transaction() as conn:
                        await write(conn, ctx, [one], worker_id, project_cache)
                except Exception as item_exc:
                    await mark_failed(ctx, one.id, worker_id, f"{type(item_exc).__name__}: {item_exc}")
    BATCH_SECONDS.observe(time.perf_counter() - started)
    return len(claimed)


async def _project(ctx: Context, project_id: int, cache: dict[int, projects.Project | None]) -> projects.Project | None:
    if project_id not in cache:
        async with ctx.db.connect() as conn:
            try:
                cache[project_id] = await projects.get_project(conn, project_id)
            except Exception:
                cache[project_id] = None
    return cache[project_id]


async def _delete_owned(ctx: Context, ids: list[int], worker_id: str) -> None:
    async with ctx.db.transaction() as conn:
        await conn.execute(delete(envelopes).where(envelopes.c.id.in_(ids), envelopes.c.claimed_by == worker_id))


async def write(
    conn: AsyncConnection,
    ctx: Context,
    batch: list[Prepared],
    worker_id: str,
    project_cache: dict[int, projects.Project | None],
) -> None:
    owned = set(
        (
            await conn.execute(
                delete(envelopes)
                .where(envelopes.c.id.in_([p.id for p in batch]), envelopes.c.claimed_by == worker_id)
                .returning(envelopes.c.id)
            )
        ).scalars()
    )
    # A claim that lapsed and was taken over by another digester is theirs to write.
    by_project: dict[int, list[Prepared]] = defaultdict(list)
    for p in batch:
        if p.id in owned:
            by_project[p.project_id].append(p)
    now = utcnow()
    for project_id, items in by_project.items():
        project = project_cache[project_id]
        assert project is not None
        await _write_project(conn, ctx, project, items, now)


async def _write_project(
    conn: AsyncConnection, ctx: Context, project: projects.Project, items: list[Prepared], now: datetime
) -> None:
    cfg = project_config(ctx.settings, project.settings)
    versions = set().union(*(p.releases() for p in items))
    await releases.record(conn, project.id, versions, now)
    await _write_events(conn, ctx, project, cfg, [(p, p.event) for p in items if p.event is not None], now)
    await _write_transactions(conn, project.id, [p for p in items if p.transaction is not None])
    batch = health.HealthBatch(project.id)
    for p in items:
        for agg in p.aggregates:
            batch.add_aggregate(agg)
    await batch.apply_updates(conn, [s for p in items for s in p.sessions], now)
    await batch.write(conn)
    await _write_feedback(conn, project.id, [f for p in items for f in p.feedback], now)
    attachment_rows = [{**a, "project_id": project.id, "created_at": now} for p in items for a in p.attachments]
    if attachment_rows:
        await conn.execute(attachments.insert(), attachment_rows)
    discarded: dict[outcomes.Key, int] = defaultdict(int)
    for p in items:
        for reason, category, quantity in p.discarded:
            discarded[(project.id, outcomes.hour_of(p.received_at), "client_discard", reason, category)] += quantity
    await outcomes.add(conn, dict(discarded))


async def _write_events(
    conn: AsyncConnection,
    ctx: Context,
    project: projects.Project,
    cfg: ProjectConfig,
    pairs: list[tuple[Prepared, PreparedEvent]],
    now: datetime,
) -> None:
    if not pairs:
        return
    ids = [e.facts.event_id for _, e in pairs]
    known = set(
        (
            await conn.execute(
                select(events.c.event_id).where(events.c.project_id == project.id, events.c.event_id.in_(ids))
            )
        ).scalars()
    )
    fresh: list[tuple[Prepared, PreparedEvent]] = []
    for p, e in pairs:  # SDK retries and duplicated envelopes: one event id is stored once
        if e.facts.event_id not in known:
            known.add(e.facts.event_id)
            fresh.append((p, e))
    if not fresh:
        return
    views = await _issue_views(conn, project.id, fresh, now)
    await _count_users(conn, project.id, fresh, views, now)
    first_seen = await releases.first_seen_map(
        conn,
        project.id,
        {e.facts.release for _, e in fresh if e.facts.release}
        | {v.resolved_in for v in views.values() if v.resolved_in},
    )
    environments: dict[int, set[str]] = defaultdict(set)
    event_rows = []
    hourly: dict[tuple[int, datetime], int] = defaultdict(int)
    tag_counts: dict[tuple[int, str, str], int] = defaultdict(int)
    for p, e in fresh:
        f = e.facts
        view = views[e.grouping.fingerprint]
        apply_event(
            view,
            event_id=f.event_id,
            level=f.level,
            is_crash=f.is_crash,
            release=f.release,
            culprit=f.culprit,
            seen_at=f.timestamp,
            first_seen=first_seen,
        )
        environments[view.id].add(f.environment)
        event_rows.append(_event_row(project.id, view.id, p.received_at, f))
        hourly[(view.id, health.hour_of(f.timestamp))] += 1
        for key, value in breakdown_tags(f).items():
            tag_counts[(view.id, key, value)] += 1
    # A plain executemany, then the new ids by (project, event id), which is unique: SQLite
    # cannot batch an INSERT … RETURNING in parameter order, and ran one statement per event.
    await conn.execute(events.insert(), event_rows)
    pk_of = {
        r.event_id: r.id
        for r in await conn.execute(
            select(events.c.id, events.c.event_id).where(
                events.c.project_id == project.id, events.c.event_id.in_([row["event_id"] for row in event_rows])
            )
        )
    }
    await conn.execute(event_data.insert(), [{"event_pk": pk_of[e.facts.event_id], "data": e.data} for _, e in fresh])
    # One executemany per counter table: a statement per row costs a round trip to the
    # database thread each, and a batch touches hundreds of (issue, tag, value) counters.
    await _add_counts(
        conn,
        issue_hourly,
        ["issue_id", "hour"],
        [{"issue_id": i, "hour": h, "project_id": project.id, "events": n} for (i, h), n in hourly.items()],
        "events",
    )
    await _add_counts(
        conn,
        issue_tags,
        ["issue_id", "key", "value"],
        [
            {"issue_id": i, "key": k, "value": v, "project_id": project.id, "count": n, "last_seen": now}
            for (i, k, v), n in tag_counts.items()
        ],
        "count",
        also=("last_seen",),
    )
    await _update_issues(conn, list(views.values()))
    for view in views.values():
        for kind, details in view.transitions:
            await add_activity(conn, view.id, project.id, kind, "system", details)
            await audit.record(
                conn,
                ctx,
                SYSTEM,
                f"errors.issue.{kind}",
                project_id=project.id,
                resource_type="issue",
                resource_id=view.id,
                details={"title": view.title[:200], **details},
            )
    await alerting.issue_alerts(
        conn,
        ctx,
        project,
        list(views.values()),
        alert_new=cfg.alert_new_issue,
        alert_regression=cfg.alert_regression,
        environments=environments,
        now=now,
    )


async def _update_issues(conn: AsyncConnection, views: list[IssueView]) -> None:
    """Write back every issue of the batch in one executemany (they all set the same columns)."""
    if not views:
        return
    names = list(IssueView.FIELDS)
    stmt = (
        update(issues)
        .where(issues.c.id == bindparam("issue_pk"))
        .values({name: bindparam(f"v_{name}") for name in names})
    )
    await conn.execute(
        stmt, [{"issue_pk": v.id, **{f"v_{name}": value for name, value in v.values().items()}} for v in views]
    )


async def _add_counts(
    conn: AsyncConnection,
    table: Any,
    keys: list[str],
    rows: list[dict[str, Any]],
    counter: str,
    also: tuple[str, ...] = (),
) -> None:
    """Insert counter rows, or add their ``counter`` to the existing ones (one executemany)."""
    if not rows:
        return
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = dialect_insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=keys,
        set_={counter: table.c[counter] + stmt.excluded[counter], **{c: stmt.excluded[c] for c in also}},
    )
    await conn.execute(stmt, rows)


def _event_row(project_id: int, issue_id: int, received_at: datetime, f: EventFacts) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "issue_id": issue_id,
        "event_id": f.event_id,
        "received_at": received_at,
        "timestamp": f.timestamp,
        "level": f.level,
        "title": f.title,
        "handled": f.handled,
        "platform": f.platform,
        "release": f.release,
        "dist": f.dist,
        "environment": f.environment,
        "update_id": f.update_id,
        "channel": f.channel,
        "runtime_version": f.runtime_version,
        "os_name": f.os_name,
        "os_version": f.os_version,
        "device_model": f.device_model,
        "app_version": f.app_version,
        "user_ident": f.user_ident,
    }


async def _issue_views(
    conn: AsyncConnection, project_id: int, fresh: list[tuple[Prepared, PreparedEvent]], now: datetime
) -> dict[str, IssueView]:
    fingerprints = sorted({e.grouping.fingerprint for _, e in fresh})
    views = {
        r.fingerprint: IssueView.from_row(r)
        for r in await conn.execute(
            select(issues).where(issues.c.project_id == project_id, issues.c.fingerprint.in_(fingerprints))
        )
    }
    for _, e in fresh:
        fp = e.grouping.fingerprint
        if fp in views:
            continue
        f = e.facts
        values = {
            "project_id": project_id,
            "fingerprint": fp,
            "grouping": e.grouping.describe(),
            "title": f.title,
            "culprit": f.culprit,
            "error_type": f.error_type,
            "level": f.level,
            "platform": f.platform,
            "is_crash": f.is_crash,
            "status": "unresolved",
            "substatus": "new",
            "opened_at": f.timestamp,
            "first_seen": f.timestamp,
            "last_seen": f.timestamp,
            "times_seen": 0,
            "users_seen": 0,
            "first_release": f.release,
            "last_release": f.release,
            "regression_count": 0,
            "resolve_count": 0,
            "total_resolve_seconds": 0.0,
            "last_event_id": f.event_id,
        }
        issue_id = (await conn.execute(issues.insert().values(values).returning(issues.c.id))).scalar_one()
        row = (await conn.execute(select(issues).where(issues.c.id == issue_id))).one()
        views[fp] = IssueView.from_row(row, is_new=True)
    return views


async def _count_users(
    conn: AsyncConnection,
    project_id: int,
    fresh: list[tuple[Prepared, PreparedEvent]],
    views: dict[str, IssueView],
    now: datetime,
) -> None:
    """Distinct users per issue: insert the new (issue, user) pairs and count them on the issue."""
    pairs: dict[tuple[int, str], datetime] = {}
    for _, e in fresh:
        if e.facts.user_ident:
            key = (views[e.grouping.fingerprint].id, e.facts.user_ident)
            pairs[key] = max(pairs.get(key, e.facts.timestamp), e.facts.timestamp)
    if not pairs:
        return
    issue_ids = sorted({k[0] for k in pairs})
    known = {
        (r.issue_id, r.user_ident)
        for r in await conn.execute(
            select(issue_users.c.issue_id, issue_users.c.user_ident).where(
                issue_users.c.issue_id.in_(issue_ids), issue_users.c.user_ident.in_(sorted({k[1] for k in pairs}))
            )
        )
    }
    by_id = {v.id: v for v in views.values()}
    seen_again = [
        {"k_issue": issue_id, "k_user": ident, "seen": seen}
        for (issue_id, ident), seen in pairs.items()
        if (issue_id, ident) in known
    ]
    new_rows = [
        {"issue_id": issue_id, "user_ident": ident, "project_id": project_id, "first_seen": seen, "last_seen": seen}
        for (issue_id, ident), seen in pairs.items()
        if (issue_id, ident) not in known
    ]
    # One executemany each, not a statement per (issue, user) pair.
    if seen_again:
        await conn.execute(
            update(issue_users)
            .where(issue_users.c.issue_id == bindparam("k_issue"), issue_users.c.user_ident == bindparam("k_user"))
            .values(last_seen=bindparam("seen")),
            seen_again,
        )
    if new_rows:
        dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        await conn.execute(
            dialect_insert(issue_users).on_conflict_do_nothing(index_elements=["issue_id", "user_ident"]), new_rows
        )
        for issue_id, _ident in (key for key in pairs if key not in known):
            by_id[issue_id].users_seen += 1


async def _write_transactions(conn: AsyncConnection, project_id: int, items: list[Prepared]) -> None:
    if not items:
        return
    ids = [p.transaction["event_id"] for p in items if p.transaction]
    known = set(
        (
            await conn.execute(
                select(transactions.c.event_id).where(
                    transactions.c.project_id == project_id, transactions.c.event_id.in_(ids)
                )
            )
        ).scalars()
    )
    for p in items:
        assert p.transaction is not None
        if p.transaction["event_id"] in known:
            continue
        known.add(p.transaction["event_id"])
        pk = (await conn.execute(transactions.insert().values(p.transaction).returning(transactions.c.id))).scalar_one()
        if p.spans:
            await conn.execute(spans.insert(), [{**s, "transaction_pk": pk} for s in p.spans])


async def _write_feedback(conn: AsyncConnection, project_id: int, entries: list[dict[str, Any]], now: datetime) -> None:
    if not entries:
        return
    linked = {e["event_id"] for e in entries if e["event_id"]}
    issue_of: dict[str, int] = {}
    if linked:
        issue_of = {
            r.event_id: r.issue_id
            for r in await conn.execute(
                select(events.c.event_id, events.c.issue_id).where(
                    events.c.project_id == project_id, events.c.event_id.in_(sorted(linked))
                )
            )
        }
    await conn.execute(
        feedback.insert(),
        [
            {**e, "project_id": project_id, "issue_id": issue_of.get(e["event_id"] or ""), "created_at": now}
            for e in entries
        ],
    )


# --- the job ----------------------------------------------------------------------------------------

jobs.recurring(DIGEST_KIND, "* * * * *", DIGEST_KIND)


@jobs.handler(DIGEST_KIND)
async def digest_job(ctx: Context, payload: dict[str, Any], job: jobs.JobInfo) -> None:
    d = digester(ctx)
    if d.active:  # a loop already runs in this process; make sure it looks again
        d.wake.set()
        return
    await drain(ctx)
