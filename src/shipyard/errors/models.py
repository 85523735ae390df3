"""Tables of the errors feature: the raw ingest queue, issues and events, release health,
transactions, feedback, outcomes, alert rules.

Hot tables are narrow and indexed for the queries the API makes; event bodies live in
their own table so that scans for lists and breakdowns never read them.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from shipyard.core.db import BigId, Json, UtcDateTime, metadata

# --- ingest queue --------------------------------------------------------------------------------

# Every accepted envelope, encrypted, until the digester has processed it (then deleted).
# A 200 is sent only once the row is committed, so this table is what makes ingest durable.
envelopes = Table(
    "errors_envelopes",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", Integer, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    Column("event_id", String(32), nullable=True),
    Column("client_ip", String(64), nullable=True),
    Column("body", LargeBinary, nullable=False),  # AES-GCM sealed envelope bytes
    Column("claimed_by", String(80), nullable=True),
    Column("claimed_until", UtcDateTime, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("failed", Boolean, nullable=False, default=False),
    Column("error", Text, nullable=True),
)

# --- releases ------------------------------------------------------------------------------------

releases = Table(
    "errors_releases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", Integer, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("version", String(250), nullable=False),
    Column("first_seen", UtcDateTime, nullable=False),
    Column("last_seen", UtcDateTime, nullable=False),
    UniqueConstraint("project_id", "version", name="uq_errors_releases_project_version"),
)

# --- issues and events ---------------------------------------------------------------------------

issues = Table(
    "errors_issues",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", Integer, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("grouping", Json, nullable=False, default=dict),  # how the fingerprint was derived
    Column("title", String(500), nullable=False),
    Column("culprit", String(500), nullable=True),
    Column("error_type", String(200), nullable=True),
    Column("level", String(16), nullable=False),
    Column("platform", String(32), nullable=True),
    Column("is_crash", Boolean, nullable=False, default=False),  # any unhandled / fatal event
    Column("status", String(16), nullable=False),  # unresolved | resolved | ignored
    Column("substatus", String(24), nullable=True),  # new | ongoing | regressed | escalating
    # resolution: now | in_next_release | in_release; resolved_in is the fixing release (or the
    # release that was current, for in_next_release)
    Column("resolution", String(20), nullable=True),
    Column("resolved_in", String(250), nullable=True),
    Column("resolved_at", UtcDateTime, nullable=True),
    Column("resolved_by", String(200), nullable=True),
    Column("verified_at", UtcDateTime, nullable=True),
    Column("opened_at", UtcDateTime, nullable=False),  # first seen, or last regression / reopen
    Column("ignore_mode", String(16), nullable=True),  # forever | until | events | users
    Column("ignore_until", UtcDateTime, nullable=True),
    Column("ignore_target", Integer, nullable=True),  # times_seen / users_seen that ends the ignore
    Column("assignee_id", Integer, nullable=True),
    Column("assignee_email", String(320), nullable=True),
    Column("first_seen", UtcDateTime, nullable=False),
    Column("last_seen", UtcDateTime, nullable=False),
    Column("times_seen", BigId, nullable=False, default=0),
    Column("users_seen", Integer, nullable=False, default=0),
    Column("first_release", String(250), nullable=True),
    Column("last_release", String(250), nullable=True),
    Column("regressed_at", UtcDateTime, nullable=True),
    Column("regression_count", Integer, nullable=False, default=0),
    Column("resolve_count", Integer, nullable=False, default=0),
    Column("total_resolve_seconds", Float, nullable=False, default=0.0),
    Column("last_event_id", String(32), nullable=True),
    UniqueConstraint("project_id", "fingerprint", name="uq_errors_issues_project_fingerprint"),
    Index("ix_errors_issues_project_last_seen", "project_id", "last_seen"),
    Index("ix_errors_issues_project_status", "project_id", "status"),
)

events = Table(
    "errors_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", Integer, nullable=False),
    Column("issue_id", BigId, ForeignKey("errors_issues.id", ondelete="CASCADE"), nullable=False),
    Column("event_id", String(32), nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    Column("timestamp", UtcDateTime, nullable=False),
    Column("level", String(16), nullable=False),
    Column("title", String(500), nullable=False),
    Column("handled", Boolean, nullable=True),
    Column("platform", String(32), nullable=True),
    Column("release", String(250), nullable=True),
    Column("dist", String(64), nullable=True),
    Column("environment", String(64), nullable=True),
    Column("update_id", String(64), nullable=True),
    Column("channel", String(100), nullable=True),
    Column("runtime_version", String(100), nullable=True),
    Column("os_name", String(64), nullable=True),
    Column("os_version", String(64), nullable=True),
    Column("device_model", String(100), nullable=True),
    Column("app_version", String(64), nullable=True),
    Column("user_ident", String(250), nullable=True),  # id:… | email:… | username:… | ip:…
    UniqueConstraint("project_id", "event_id", name="uq_errors_events_project_event"),
    Index("ix_errors_events_issue_id", "issue_id", "id"),
    Index("ix_errors_events_issue_received", "issue_id", "received_at"),
    Index("ix_errors_events_project_received", "project_id", "received_at"),
    Index("ix_errors_events_project_user", "project_id", "user_ident"),
)

# The full (scrubbed, normalised) event JSON, read only for one event at a time.
event_data = Table(
    "errors_event_data",
    metadata,
    Column("event_pk", BigId, ForeignKey("errors_events.id", ondelete="CASCADE"), primary_key=True),
    Column("data", Json, nullable=False),
)

issue_hourly = Table(
    "errors_issue_hourly",
    metadata,
    Column("issue_id", BigId, ForeignKey("errors_issues.id", ondelete="CASCADE"), primary_key=True),
    Column("hour", UtcDateTime, primary_key=True),
    Column("project_id", Integer, nullable=False),
    Column("events", Integer, nullable=False, default=0),
    Index("ix_errors_issue_hourly_project_hour", "project_id", "hour"),
)

# Tag value counts per issue: tags distribution and the breakdowns (release, OTA update, OS, …).
issue_tags = Table(
    "errors_issue_tags",
    metadata,
    Column("issue_id", BigId, ForeignKey("errors_issues.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("value", String(200), primary_key=True),
    Column("project_id", Integer, nullable=False),
    Column("count", BigId, nullable=False, default=0),
    Column("last_seen", UtcDateTime, nullable=False),
    Index("ix_errors_issue_tags_project_key", "project_id", "key"),
)

issue_users = Table(
    "errors_issue_users",
    metadata,
    Column("issue_id", BigId, ForeignKey("errors_issues.id", ondelete="CASCADE"), primary_key=True),
    Column("user_ident", String(250), primary_key=True),
    Column("project_id", Integer, nullable=False),
    Column("first_seen", UtcDateTime, nullable=False),
    Column("last_seen", UtcDateTime, nullable=False),
    Index("ix_errors_issue_users_issue_last", "issue_id", "last_seen"),
    Index("ix_errors_issue_users_project_user", "project_id", "user_ident"),
)

issue_activity = Table(
    "errors_issue_activity",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("issue_id", BigId, ForeignKey("errors_issues.id", ondelete="CASCADE"), nullable=False),
    Column("project_id", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("actor", String(200), nullable=True),
    Column("details", Json, nullable=False, default=dict),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_errors_issue_activity_issue", "issue_id", "id"),
)

attachments = Table(
    "errors_attachments",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", Integer, nullable=False),
    Column("event_id", String(32), nullable=True),
    Column("filename", String(250), nullable=False),
    Column("content_type", String(100), nullable=True),
    Column("attachment_type", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("blob_key", String(64), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_errors_attachments_event", "project_id", "event_id"),
)

feedback = Table(
    "errors_feedback",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", Integer, nullable=False),
    Column("event_id", String(32), nullable=True),  # the event the feedback is about
    Column("issue_id", BigId, nullable=True),
    Column("name", String(200), nullable=True),
    Column("email", String(320), nullable=True),
    Column("comments", Text, nullable=False),
    Column("url", String(1000), nullable=True),
    Column("source", String(16), nullable=False),  # user_report | feedback
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_errors_feedback_event", "project_id", "event_id"),
    Index("ix_errors_feedback_issue", "issue_id"),
)

# --- transactions --------------------------------------------------------------------------------

transactions = Table(
    "errors_transactions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", Integer, nullable=False),
    Column("event_id", String(32), nullable=False),
    Column("trace_id", String(32), nullable=True),
    Column("span_id", String(16), nullable=True),
    Column("name", String(500), nullable=False),
    Column("op", String(100), nullable=True),
    Column("status", String(32), nullable=True),
    Column("start_timestamp", UtcDateTime, nullable=False),
    Column("timestamp", UtcDateTime, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("release", String(250), nullable=True),
    Column("environment", String(64), nullable=True),
    Column("update_id", String(64), nullable=True),
    Column("user_ident", String(250), nullable=True),
    Column("measurements", Json, nullable=False, default=dict),
    Column("tags", Json, nullable=False, default=dict),
    Column("received_at", UtcDateTime, nullable=False),
    UniqueConstraint("project_id", "event_id", name="uq_errors_transactions_project_event"),
    Index("ix_errors_transactions_project_name_ts", "project_id", "name", "timestamp"),
    Index("ix_errors_transactions_project_ts", "project_id", "timestamp"),
)

spans = Table(
    "errors_spans",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("transaction_pk", BigId, ForeignKey("errors_transactions.id", ondelete="CASCADE"), nullable=False),
    Column("span_id", String(16), nullable=False),
    Column("parent_span_id", String(16), nullable=True),
    Column("op", String(100), nullable=True),
    Column("description", String(1000), nullable=True),
    Column("status", String(32), nullable=True),
    Column("start_timestamp", UtcDateTime, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("data", Json, nullable=False, default=dict),
    Index("ix_errors_spans_transaction", "transaction_pk"),
)

# --- release health ------------------------------------------------------------------------------

# Additive hourly buckets per (project, release, environment, OTA update id).
session_hourly = Table(
    "errors_session_hourly",
    metadata,
    Column("project_id", Integer, primary_key=True),
    Column("hour", UtcDateTime, primary_key=True),
    Column("release", String(250), primary_key=True),
    Column("environment", String(64), primary_key=True),
    Column("update_id", String(64), primary_key=True),  # "" when unknown
    Column("total", Integer, nullable=False, default=0),
    Column("errored", Integer, nullable=False, default=0),  # errored, crashed or abnormal
    Column("crashed", Integer, nullable=False, default=0),
    Column("abnormal", Integer, nullable=False, default=0),
    Index("ix_errors_session_hourly_update", "project_id", "update_id", "hour"),
)

# Distinct users (hashed ``did``) per day and bucket, with whether any of their sessions crashed.
session_users = Table(
    "errors_session_users",
    metadata,
    Column("project_id", Integer, primary_key=True),
    Column("day", UtcDateTime, primary_key=True),
    Column("release", String(250), primary_key=True),
    Column("environment", String(64), primary_key=True),
    Column("update_id", String(64), primary_key=True),
    Column("did_hash", String(32), primary_key=True),
    Column("crashed", Boolean, nullable=False, default=False),
)

# Per-session state for the 5 days a session may be updated: makes counting idempotent
# (a session counts once as errored) and keeps terminal states terminal.
session_state = Table(
    "errors_session_state",
    metadata,
    Column("project_id", Integer, primary_key=True),
    Column("sid", String(36), primary_key=True),
    Column("started", UtcDateTime, nullable=False),
    Column("release", String(250), nullable=False),
    Column("environment", String(64), nullable=False),
    Column("update_id", String(64), nullable=False),
    Column("did_hash", String(32), nullable=True),
    Column("status", String(16), nullable=False),
    Column("counted", Boolean, nullable=False, default=False),  # its init update was seen
    Column("errored_counted", Boolean, nullable=False, default=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_errors_session_state_updated", "updated_at"),
)

# --- outcomes, alerts ----------------------------------------------------------------------------

# What was dropped, and why: our quotas (rate_limited), SDK client reports (client_discard),
# invalid items (invalid). Hourly counters per category.
outcomes = Table(
    "errors_outcomes",
    metadata,
    Column("project_id", Integer, primary_key=True),
    Column("hour", UtcDateTime, primary_key=True),
    Column("outcome", String(24), primary_key=True),
    Column("reason", String(64), primary_key=True),
    Column("category", String(32), primary_key=True),
    Column("quantity", BigId, nullable=False, default=0),
)

alert_rules = Table(
    "errors_alert_rules",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", Integer, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    # new_issue | regression | event_frequency | user_frequency | spike | crash_free
    Column("kind", String(24), nullable=False),
    Column("threshold", Float, nullable=True),
    Column("window_minutes", Integer, nullable=False, default=60),
    Column("interval_minutes", Integer, nullable=False, default=60),
    Column("min_count", Integer, nullable=False, default=0),  # spike: events; crash_free: sessions
    Column("environment", String(64), nullable=True),
    Column("severity", String(16), nullable=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_errors_alert_rules_project", "project_id"),
)

# When a rule last fired for a subject (issue id or release): the per-issue action interval.
alert_fires = Table(
    "errors_alert_fires",
    metadata,
    Column("project_id", Integer, primary_key=True),
    Column("rule_key", String(32), primary_key=True),  # new_issue | regression | rule:<id>
    Column("subject", String(300), primary_key=True),
    Column("fired_at", UtcDateTime, nullable=False),
    Column("count", Integer, nullable=False, default=1),
)
