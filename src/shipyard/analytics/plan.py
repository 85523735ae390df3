"""Tracking plan (task 3.3): event schemas per project, violations, the default CanaBro plan.

A schema names an event, its feature area and its properties (type, required). Ingest
checks every track event of a project that has a plan; violations are counted per day,
event, kind and property (with the last offending example) and, when the project
enforces the plan, the event is not stored (and counted as blocked).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.analytics.identity import dialect_insert
from shipyard.analytics.models import event_schemas, plan_violations
from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.core.errors import BadRequest

PROPERTY_TYPES = ("string", "number", "integer", "boolean", "object", "array", "any")
CACHE_TTL = 10.0


def _p(name: str, type_: str, required: bool = False, description: str = "") -> dict[str, Any]:
    return {"name": name, "type": type_, "required": required, "description": description}


# The CanaBro plan from the seed's task 3.3: plant management, community, strain
# database, diagnosis, calendar and reminders.
CANABRO_PLAN: list[dict[str, Any]] = [
    {
        "event": "plant_created",
        "feature_area": "plant_management",
        "description": "A grower added a plant.",
        "properties": [
            _p("plant_id", "string", True),
            _p("strain", "string"),
            _p("growing_medium", "string", description="soil, coco, hydro…"),
            _p("stage", "string", description="seedling, vegetative, flowering…"),
        ],
    },
    {
        "event": "plant_updated",
        "feature_area": "plant_management",
        "description": "A plant's details or stage changed.",
        "properties": [_p("plant_id", "string", True), _p("fields_changed", "array"), _p("stage", "string")],
    },
    {
        "event": "care_task_completed",
        "feature_area": "plant_management",
        "description": "A care task (watering, feeding, training…) was marked done.",
        "properties": [
            _p("plant_id", "string", True),
            _p("task_type", "string", True),
            _p("on_time", "boolean"),
        ],
    },
    {
        "event": "post_created",
        "feature_area": "community",
        "description": "A community post was published.",
        "properties": [_p("post_id", "string", True), _p("has_image", "boolean"), _p("category", "string")],
    },
    {
        "event": "comment_created",
        "feature_area": "community",
        "description": "A comment was added to a post.",
        "properties": [_p("post_id", "string", True), _p("comment_id", "string", True)],
    },
    {
        "event": "post_liked",
        "feature_area": "community",
        "description": "A post was liked.",
        "properties": [_p("post_id", "string", True)],
    },
    {
        "event": "strain_searched",
        "feature_area": "strain_database",
        "description": "The strain database was searched.",
        "properties": [_p("query", "string", True), _p("results_count", "integer")],
    },
    {
        "event": "strain_viewed",
        "feature_area": "strain_database",
        "description": "A strain's page was opened.",
        "properties": [_p("strain_id", "string", True), _p("strain_name", "string"), _p("source", "string")],
    },
    {
        "event": "diagnosis_requested",
        "feature_area": "diagnosis",
        "description": "A plant diagnosis was requested (photo and symptoms).",
        "properties": [_p("plant_id", "string"), _p("image_count", "integer"), _p("symptoms", "array")],
    },
    {
        "event": "diagnosis_result_viewed",
        "feature_area": "diagnosis",
        "description": "The grower opened a diagnosis result.",
        "properties": [
            _p("diagnosis_id", "string", True),
            _p("top_issue", "string"),
            _p("confidence", "number"),
            _p("helpful", "boolean"),
        ],
    },
    {
        "event": "reminder_created",
        "feature_area": "calendar_reminders",
        "description": "A care reminder was scheduled.",
        "properties": [_p("reminder_id", "string", True), _p("task_type", "string", True), _p("recurrence", "string")],
    },
    {
        "event": "calendar_viewed",
        "feature_area": "calendar_reminders",
        "description": "The grow calendar was opened.",
        "properties": [_p("view", "string", description="day, week or month")],
    },
]


@dataclass(frozen=True)
class CompiledSchema:
    required: tuple[str, ...]
    types: dict[str, str]
    allow_additional: bool
    feature_area: str | None


@dataclass(frozen=True)
class Plan:
    schemas: dict[str, CompiledSchema] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return bool(self.schemas)


@dataclass(frozen=True)
class Violation:
    kind: str  # unplanned_event | missing_property | wrong_type | unexpected_property
    property: str = ""
    detail: str = ""


def _type_ok(expected: str, value: Any) -> bool:
    if expected == "any":
        return True
    if expected == "string":
        return isinstance(value, str)
    if expected == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if expected == "number":
        return isinstance(value, int | float)
    if expected == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if expected == "object":
        return isinstance(value, dict)
    if expected == "array":
        return isinstance(value, list)
    return False


def check(plan: Plan, event: str, properties: dict[str, Any]) -> list[Violation]:
    """Violations of one track event against the plan (empty when it conforms)."""
    schema = plan.schemas.get(event)
    if schema is None:
        return [Violation("unplanned_event", "", f"{event} is not in the tracking plan")]
    problems: list[Violation] = []
    for name in schema.required:
        if properties.get(name) is None:
            problems.append(Violation("missing_property", name, f"required property {name} is missing"))
    for name, value in properties.items():
        expected = schema.types.get(name)
        if expected is None:
            if not schema.allow_additional:
                problems.append(Violation("unexpected_property", name, f"{name} is not in the schema"))
        elif value is not None and not _type_ok(expected, value):
            problems.append(Violation("wrong_type", name, f"{name} should be {expected}, got {type(value).__name__}"))
    return problems


# --- schemas ----------------------------------------------------------------------------------


def validate_properties(properties: Any) -> list[dict[str, Any]]:
    if not isinstance(properties, list):
        raise BadRequest("properties must be a list of {name, type, required, description}")
    seen: set[str] = set()
    cleaned = []
    for item in properties:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise BadRequest("each property needs a name")
        name = item["name"]
        if name in seen:
            raise BadRequest(f"property {name} is listed twice")
        seen.add(name)
        type_ = item.get("type", "any")
        if type_ not in PROPERTY_TYPES:
            raise BadRequest(f"property {name} has unknown type {type_!r}; use one of {', '.join(PROPERTY_TYPES)}")
        cleaned.append(
            {
                "name": name,
                "type": type_,
                "required": bool(item.get("required", False)),
                "description": str(item.get("description", ""))[:500],
            }
        )
    return cleaned


def schema_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "event": row.event,
        "description": row.description,
        "feature_area": row.feature_area,
        "properties": row.properties,
        "allow_additional": row.allow_additional,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


async def put_schema(
    conn: AsyncConnection,
    project_id: int,
    event: str,
    *,
    description: str = "",
    feature_area: str | None = None,
    properties: list[dict[str, Any]] | None = None,
    allow_additional: bool = True,
) -> tuple[dict[str, Any], bool]:
    """Create or replace the schema of ``event``; returns (schema, created)."""
    if not event or len(event) > 200 or event.startswith("$"):
        raise BadRequest("event must be 1–200 characters and not start with $")
    cleaned = validate_properties(properties or [])
    now = utcnow()
    existing = (
        await conn.execute(
            select(event_schemas.c.id).where(event_schemas.c.project_id == project_id, event_schemas.c.event == event)
        )
    ).first()
    values = {
        "description": description,
        "feature_area": feature_area or None,
        "properties": cleaned,
        "allow_additional": allow_additional,
        "updated_at": now,
    }
    if existing:
        await conn.execute(event_schemas.update().where(event_schemas.c.id == existing.id).values(**values))
    else:
        await conn.execute(event_schemas.insert().values(project_id=project_id, event=event, created_at=now, **values))
    row = (
        await conn.execute(
            select(event_schemas).where(event_schemas.c.project_id == project_id, event_schemas.c.event == event)
        )
    ).one()
    return schema_dict(row), existing is None


async def delete_schema(conn: AsyncConnection, project_id: int, event: str) -> bool:
    result = await conn.execute(
        delete(event_schemas).where(event_schemas.c.project_id == project_id, event_schemas.c.event == event)
    )
    return bool(result.rowcount)


async def list_schemas(
    conn: AsyncConnection, project_id: int, *, after_id: int | None = None, limit: int = 500
) -> list[dict[str, Any]]:
    query = select(event_schemas).where(event_schemas.c.project_id == project_id)
    if after_id is not None:
        query = query.where(event_schemas.c.id > after_id)
    rows = await conn.execute(query.order_by(event_schemas.c.id).limit(limit))
    return [schema_dict(r) for r in rows]


async def install_default_plan(conn: AsyncConnection, project_id: int) -> list[str]:
    """Add the CanaBro schemas the project does not have yet; returns the events added."""
    existing = {
        r.event
        for r in await conn.execute(select(event_schemas.c.event).where(event_schemas.c.project_id == project_id))
    }
    added = []
    for schema in CANABRO_PLAN:
        if schema["event"] in existing:
            continue
        await put_schema(
            conn,
            project_id,
            schema["event"],
            description=schema["description"],
            feature_area=schema["feature_area"],
            properties=schema["properties"],
        )
        added.append(schema["event"])
    return added


async def feature_areas(conn: AsyncConnection, project_id: int) -> dict[str, list[str]]:
    rows = await conn.execute(
        select(event_schemas.c.feature_area, event_schemas.c.event)
        .where(event_schemas.c.project_id == project_id, event_schemas.c.feature_area.is_not(None))
        .order_by(event_schemas.c.feature_area, event_schemas.c.event)
    )
    areas: dict[str, list[str]] = {}
    for row in rows:
        areas.setdefault(row.feature_area, []).append(row.event)
    return areas


async def load_plan(conn: AsyncConnection, project_id: int) -> Plan:
    rows = await conn.execute(select(event_schemas).where(event_schemas.c.project_id == project_id))
    schemas = {}
    for row in rows:
        props = row.properties or []
        schemas[row.event] = CompiledSchema(
            required=tuple(p["name"] for p in props if p.get("required")),
            types={p["name"]: p.get("type", "any") for p in props},
            allow_additional=bool(row.allow_additional),
            feature_area=row.feature_area,
        )
    return Plan(schemas)


async def cached_plan(ctx: Context, project_id: int) -> Plan:
    cache: dict[int, tuple[float, Plan]] = ctx.extras.setdefault("analytics_plan_cache", {})
    now = time.monotonic()
    hit = cache.get(project_id)
    if hit is not None and hit[0] > now:
        return hit[1]
    async with ctx.db.connect() as conn:
        plan = await load_plan(conn, project_id)
    cache[project_id] = (now + CACHE_TTL, plan)
    return plan


def forget_plan(ctx: Context, project_id: int) -> None:
    ctx.extras.setdefault("analytics_plan_cache", {}).pop(project_id, None)


# --- violations ---------------------------------------------------------------------------------


@dataclass
class ViolationTally:
    """Violations of one request, aggregated before they are written."""

    counts: dict[tuple[int, str, str, str], list[Any]] = field(default_factory=dict)

    def add(self, day: int, event: str, violation: Violation, *, blocked: bool, ts_ms: int, sample: Any) -> None:
        key = (day, event, violation.kind, violation.property)
        entry = self.counts.get(key)
        if entry is None:
            self.counts[key] = [1, int(blocked), ts_ms, sample]
        else:
            entry[0] += 1
            entry[1] += int(blocked)
            entry[2] = max(entry[2], ts_ms)
            entry[3] = sample

    def merge(self, other: ViolationTally) -> None:
        """Add another request's violations (the later request's sample wins)."""
        for key, (count, blocked, last_ms, sample) in other.counts.items():
            entry = self.counts.get(key)
            if entry is None:
                self.counts[key] = [count, blocked, last_ms, sample]
            else:
                entry[0] += count
                entry[1] += blocked
                entry[2] = max(entry[2], last_ms)
                entry[3] = sample

    async def write(self, conn: AsyncConnection, project_id: int) -> None:
        # Rows in one order for every writer: group commits in flight together on PostgreSQL
        # then wait for each other's row locks instead of deadlocking.
        ordered = sorted(self.counts.items(), key=lambda item: tuple(str(part) for part in item[0]))
        for (day, event, kind, prop), (count, blocked, last_ms, sample) in ordered:
            stmt = dialect_insert(conn, plan_violations).values(
                project_id=project_id,
                day=day,
                event=event,
                kind=kind,
                property=prop,
                count=count,
                blocked=blocked,
                last_seen_ms=last_ms,
                sample=sample,
            )
            greatest = func.max if conn.dialect.name == "sqlite" else func.greatest
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["project_id", "day", "event", "kind", "property"],
                    set_={
                        "count": plan_violations.c.count + stmt.excluded.count,
                        "blocked": plan_violations.c.blocked + stmt.excluded.blocked,
                        "last_seen_ms": greatest(plan_violations.c.last_seen_ms, stmt.excluded.last_seen_ms),
                        "sample": stmt.excluded.sample,
                    },
                )
            )


def sample_of(properties: dict[str, Any], limit: int = 2000) -> dict[str, Any]:
    """A size-capped example of the offending properties, for the violations report."""
    encoded = orjson.dumps(properties)
    if len(encoded) <= limit:
        return properties
    return {"_truncated": encoded[:limit].decode("utf-8", "ignore")}


async def violations_report(
    conn: AsyncConnection, project_id: int, *, from_day: int, to_day: int
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(
            plan_violations.c.event,
            plan_violations.c.kind,
            plan_violations.c.property,
            func.sum(plan_violations.c.count).label("total"),
            func.sum(plan_violations.c.blocked).label("blocked"),
            func.max(plan_violations.c.last_seen_ms).label("last_seen_ms"),
        )
        .where(
            plan_violations.c.project_id == project_id,
            plan_violations.c.day >= from_day,
            plan_violations.c.day <= to_day,
        )
        .group_by(plan_violations.c.event, plan_violations.c.kind, plan_violations.c.property)
        .order_by(func.sum(plan_violations.c.count).desc())
    )
    report = []
    for row in rows:
        sample = (
            await conn.execute(
                select(plan_violations.c.sample)
                .where(
                    plan_violations.c.project_id == project_id,
                    plan_violations.c.event == row.event,
                    plan_violations.c.kind == row.kind,
                    plan_violations.c.property == row.property,
                )
                .order_by(plan_violations.c.day.desc())
                .limit(1)
            )
        ).scalar()
        report.append(
            {
                "event": row.event,
                "kind": row.kind,
                "property": row.property or None,
                "count": int(row.total),
                "blocked": int(row.blocked),
                "last_seen_ms": int(row.last_seen_ms),
                "sample": sample,
            }
        )
    return report
