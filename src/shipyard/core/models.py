"""Tables owned by core: projects, people and keys, jobs, audit trail, alerts, server keys."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from shipyard.core.db import BigId, Json, UtcDateTime, metadata

projects = Table(
    "projects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("slug", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("settings", Json, nullable=False, default=dict),
    Column("created_at", UtcDateTime, nullable=False),
)

environments = Table(
    "environments",
    metadata,
    Column("project_id", Integer, ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("created_at", UtcDateTime, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=False),
    Column("is_instance_admin", Boolean, nullable=False, default=False),
    Column("totp_secret", Text, nullable=True),  # encrypted with core.crypto
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", UtcDateTime, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("last_login_at", UtcDateTime, nullable=True),
)

memberships = Table(
    "memberships",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("project_id", Integer, ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", Integer, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(8), nullable=False),  # public | secret
    Column("name", String(200), nullable=False),
    # Public keys are public by design (embedded in apps) and stored as-is; secret keys
    # are stored only as a SHA-256 digest of the key, which is high-entropy.
    Column("public_value", String(64), nullable=True, unique=True),
    Column("secret_hash", String(64), nullable=True, unique=True),
    Column("display_prefix", String(16), nullable=False),
    Column("role", String(16), nullable=False),
    Column("scopes", Json, nullable=False, default=list),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=True),
    Column("revoked_at", UtcDateTime, nullable=True),
    Column("last_used_at", UtcDateTime, nullable=True),
)

login_sessions = Table(
    "login_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("mfa_passed", Boolean, nullable=False, default=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("ip", String(64), nullable=True),
    Column("user_agent", String(400), nullable=True),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("kind", String(100), nullable=False),
    Column("payload", Json, nullable=False),
    Column("status", String(16), nullable=False),  # queued | running | done | dead | cancelled
    Column("priority", Integer, nullable=False, default=100),  # lower runs first
    Column("run_at", UtcDateTime, nullable=False),
    Column("idempotency_key", String(300), nullable=True, unique=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False),
    Column("locked_by", String(100), nullable=True),
    Column("locked_until", UtcDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("project_id", Integer, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=True),
    Index("ix_jobs_due", "status", "run_at", "priority"),
)

job_schedules = Table(
    "job_schedules",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("cron", String(100), nullable=False),
    Column("kind", String(100), nullable=False),
    Column("payload", Json, nullable=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("last_fired_at", UtcDateTime, nullable=True),
)

worker_heartbeats = Table(
    "worker_heartbeats",
    metadata,
    Column("worker_id", String(100), primary_key=True),
    Column("hostname", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("last_seen_at", UtcDateTime, nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("seq", BigId, nullable=False, unique=True),
    Column("ts", UtcDateTime, nullable=False),
    Column("project_id", Integer, nullable=True),
    Column("actor_type", String(16), nullable=False),  # user | key | system
    Column("actor_id", String(200), nullable=True),
    Column("action", String(100), nullable=False),
    Column("resource_type", String(64), nullable=True),
    Column("resource_id", String(200), nullable=True),
    Column("outcome", String(16), nullable=False),
    Column("ip", String(64), nullable=True),
    Column("user_agent", String(400), nullable=True),
    Column("request_id", String(100), nullable=True),
    Column("details", Json, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_project_ts", "project_id", "ts"),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("seq", BigId, nullable=False),
    Column("head_hash", String(64), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("signature", String(200), nullable=False),
    Column("public_key", String(100), nullable=False),
)

server_keys = Table(
    "server_keys",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False, info={"encrypted": True}),  # encrypted with core.crypto
    Column("created_at", UtcDateTime, nullable=False),
)

alert_channels = Table(
    "alert_channels",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", Integer, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(32), nullable=False),  # webhook (more kinds in the alerting issue)
    Column("name", String(200), nullable=False),
    Column("url", Text, nullable=False),
    Column("secret", Text, nullable=False),  # encrypted with core.crypto
    Column("min_severity", String(16), nullable=False, default="info"),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", UtcDateTime, nullable=False),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", Integer, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("dedup_key", String(300), nullable=False),
    Column("source", String(64), nullable=False),
    Column("severity", String(16), nullable=False),  # info | warning | error | critical
    Column("status", String(16), nullable=False),  # firing | resolved
    Column("summary", Text, nullable=False),
    Column("details", Json, nullable=False),
    Column("link", Text, nullable=True),
    Column("occurrences", Integer, nullable=False, default=1),
    Column("first_seen_at", UtcDateTime, nullable=False),
    Column("last_seen_at", UtcDateTime, nullable=False),
    Column("resolved_at", UtcDateTime, nullable=True),
    Index("ix_alerts_open", "project_id", "dedup_key", "status"),
)

alert_deliveries = Table(
    "alert_deliveries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("alert_id", BigId, ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False),
    Column("channel_id", Integer, ForeignKey("alert_channels.id", ondelete="CASCADE"), nullable=False),
    Column("event", String(16), nullable=False),  # firing | resolved
    Column("status", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("response_status", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("delivered_at", UtcDateTime, nullable=True),
)

__all__ = [
    "alert_channels",
    "alert_deliveries",
    "alerts",
    "api_keys",
    "audit_checkpoints",
    "audit_log",
    "environments",
    "job_schedules",
    "jobs",
    "login_sessions",
    "memberships",
    "projects",
    "server_keys",
    "users",
    "worker_heartbeats",
]
