"""Analytics tables.

Raw events carry their time as integer epoch milliseconds (``ts_ms``) rather than a
datetime column: every query buckets and compares times, integer arithmetic renders
the same on SQLite and PostgreSQL, and reading 300,000 integers is several times
cheaper than parsing 300,000 timestamps (measured while building funnels).

``user_key`` is the canonical person an event belongs to: the ``userId`` when the
event has one, otherwise the anonymous id (or, once that anonymous id has been linked
to a user, that user). Merges rewrite ``user_key`` so that queries never need a join
to resolve identities.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from shipyard.core.db import BigId, Json, UtcDateTime, metadata


def _event_columns() -> list[Column[Any]]:
    """The columns of a stored message, shared by the events and the landing table."""
    return [
        Column("project_id", Integer, nullable=False),
        Column("message_id", String(100), nullable=False),
        Column("type", String(10), nullable=False),  # track | screen | page | identify | group | alias
        # The track event name, or $screen / $pageview / $identify / $group / $alias.
        Column("event", String(200), nullable=False),
        Column("screen", String(200), nullable=True),  # screen / page name
        Column("user_key", String(200), nullable=False),
        Column("user_id", String(200), nullable=True),
        Column("anonymous_id", String(200), nullable=True),
        Column("ts_ms", BigInteger, nullable=False),  # skew-corrected event time
        Column("received_ms", BigInteger, nullable=False),
        Column("session_id", String(100), nullable=True),  # client-supplied session id, if any
        Column("properties", Json, nullable=True),
        Column("context", Json, nullable=True),
        Column("ip", String(64), nullable=True),
    ]


events = Table(
    "analytics_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    *_event_columns(),
    UniqueConstraint("project_id", "message_id", name="uq_analytics_events_message"),
    # Covering index for trends, funnels and retention: the range of one event,
    # with the user, without touching the table.
    Index("ix_analytics_events_event", "project_id", "event", "ts_ms", "user_key"),
    Index("ix_analytics_events_user", "project_id", "user_key", "ts_ms"),
    Index("ix_analytics_events_time", "project_id", "ts_ms"),
    # Ids must only grow (rollups and purges walk them): SQLite would otherwise reuse
    # the ids of deleted newest rows.
    sqlite_autoincrement=True,
)

# The landing table: every accepted message is committed here first, before the answer to
# the client, and moved into ``analytics_events`` by the loader (``landing.py``) in large
# chunks. It has no secondary index, so the write a request waits for appends to one b-tree;
# the four indexes of the events table are updated once per chunk rather than once per
# request, which is what bounded ingest (see docs/decisions/0004-analytics-landing-table.md).
incoming = Table(
    "analytics_incoming",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    *_event_columns(),
    # Ids are never reused, so a drain can load "everything up to the id it saw".
    sqlite_autoincrement=True,
)

# People: traits from identify (the seed's UserProperties), last device, first/last seen.
users = Table(
    "analytics_users",
    metadata,
    Column("project_id", Integer, primary_key=True),
    Column("user_key", String(200), primary_key=True),
    Column("identified", Boolean, nullable=False, default=False),
    Column("traits", Json, nullable=False, default=dict),
    Column("device", Json, nullable=False, default=dict),  # app / device / os / locale / timezone
    Column("first_seen_ms", BigInteger, nullable=True),
    Column("last_seen_ms", BigInteger, nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_analytics_users_first_seen", "project_id", "first_seen_ms"),
)

# anonymousId / previousId -> the user it was merged into.
aliases = Table(
    "analytics_aliases",
    metadata,
    Column("project_id", Integer, primary_key=True),
    Column("alias", String(200), primary_key=True),
    Column("user_key", String(200), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    # user_key first: see migration analytics_0004 (alias lookups must take the primary key).
    Index("ix_analytics_aliases_user", "user_key", "project_id"),
)

groups = Table(
    "analytics_groups",
    metadata,
    Column("project_id", Integer, primary_key=True),
    Column("group_id", String(200), primary_key=True),
    Column("traits", Json, nullable=False, default=dict),
    Column("updated_at", UtcDateTime, nullable=False),
)

group_members = Table(
    "analytics_group_members",
    metadata,
    Column("project_id", Integer, primary_key=True),
    Column("group_id", String(200), primary_key=True),
    Column("user_key", String(200), primary_key=True),
    Column("joined_at", UtcDateTime, nullable=False),
)

# --- consent and privacy -------------------------------------------------------------

consents = Table(
    "analytics_consents",
    metadata,
    Column("project_id", Integer, primary_key=True),
    Column("user_key", String(200), primary_key=True),
    Column("purpose", String(32), primary_key=True),  # analytics | crash_reporting | push | marketing
    Column("granted", Boolean, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("source", String(100), nullable=True),
)

consent_history = Table(
    "analytics_consent_history",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", Integer, nullable=False),
    Column("user_key", String(200), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("granted", Boolean, nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
    Column("source", String(100), nullable=True),
    Column("ip", String(64), nullable=True),
    Index("ix_analytics_consent_history_user", "project_id", "user_key", "id"),
)

suppressions = Table(
    "analytics_suppressions",
    metadata,
    Column("project_id", Integer, primary_key=True),
    Column("user_key", String(200), primary_key=True),
    Column("reason", String(200), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
)

# One random salt per project and day for privacy mode (Aptabase style); purged after two days.
salts = Table(
    "analytics_salts",
    metadata,
    Column("project_id", Integer, primary_key=True),
    Column("day", Integer, primary_key=True),
    Column("salt", String(64), nullable=False),
)

# Events not stored as sent, by reason (duplicate, suppressed, consent_dropped, …), per day.
ingest_counters = Table(
    "analytics_ingest_counters",
    metadata,
    Column("project_id", Integer, primary_key=True),
    Column("day", Integer, primary_key=True),
    Column("outcome", String(32), primary_key=True),
    Column("count", BigInteger, nullable=False),
)

# --- tracking plan ---------------------------------------------------------------------

event_schemas = Table(
    "analytics_event_schemas",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", Integer, nullable=False),
    Column("event", String(200), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("feature_area", String(100), nullable=True),
    # [{"name", "type", "required", "description"}]
    Column("properties", Json, nullable=False, default=list),
    Column("allow_additional", Boolean, nullable=False, default=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("project_id", "event", name="uq_analytics_event_schemas_event"),
)

plan_violations = Table(
    "analytics_plan_violations",
    metadata,
    Column("project_id", Integer, primary_key=True),
    Column("day", Integer, primary_key=True),
    Column("event", String(200), primary_key=True),
    Column("kind", String(32), primary_key=True),  # unplanned_event | missing_property | wrong_type | …
    Column("property", String(200), primary_key=True),  # "" when the violation is about the event
    Column("count", BigInteger, nullable=False),
    Column("blocked", BigInteger, nullable=False, default=0),
    Column("last_seen_ms", BigInteger, nullable=False),
    Column("sample", Json, nullable=True),
)

# --- rollups (maintained incrementally by the rollup job) --------------------------------

rollup_state = Table(
    "analytics_rollup_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("last_event_id", BigInteger, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

daily_counts = Table(
    "analytics_daily_counts",
    metadata,
    Column("project_id", Integer, primary_key=True),
    Column("day", Integer, primary_key=True),
    Column("event", String(200), primary_key=True),
    Column("count", BigInteger, nullable=False),
)

daily_users = Table(
    "analytics_daily_users",
    metadata,
    Column("project_id", Integer, primary_key=True),
    Column("day", Integer, primary_key=True),
    Column("user_key", String(200), primary_key=True),
    Column("events", BigInteger, nullable=False),
    Index("ix_analytics_daily_users_user", "project_id", "user_key", "day"),
)

# --- saved insights --------------------------------------------------------------------

insights = Table(
    "analytics_insights",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", Integer, nullable=False),
    Column("name", String(200), nullable=False),
    Column("kind", String(32), nullable=False),  # trends | funnel | retention | …
    Column("query", Json, nullable=False),
    Column("pinned", Boolean, nullable=False, default=False),
    Column("created_by", String(200), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_analytics_insights_project", "project_id", "id"),
)
