"""Push tables. Every name starts with ``push_``; other features use :mod:`shipyard.push.service`."""

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
    UniqueConstraint,
)

from shipyard.core.db import BigId, Json, UtcDateTime, metadata


def _project_fk() -> ForeignKey:
    return ForeignKey("projects.id", ondelete="CASCADE")


# A device is one push token: an Expo token (relay mode) or a native FCM/APNs token (direct mode).
devices = Table(
    "push_devices",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", Integer, _project_fk(), nullable=False),
    Column("token", String(512), nullable=False),
    Column("provider", String(8), nullable=False),  # expo | fcm | apns
    Column("platform", String(16), nullable=False),  # ios | android | web
    Column("user_id", String(200), nullable=True),
    Column("app_version", String(64), nullable=True),
    Column("locale", String(35), nullable=True),
    Column("timezone", String(64), nullable=True),
    Column("permission", String(16), nullable=False),  # granted | denied | provisional | not_asked
    Column("environment", String(16), nullable=False, default="production"),  # APNs sandbox or not
    Column("active", Boolean, nullable=False, default=True),
    Column("deactivated_reason", String(300), nullable=True),
    Column("deactivated_at", UtcDateTime, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("last_seen_at", UtcDateTime, nullable=False),
    UniqueConstraint("project_id", "token", name="uq_push_devices_project_token"),
    Index("ix_push_devices_user", "project_id", "user_id"),
    Index("ix_push_devices_seen", "active", "last_seen_at"),
)

topic_subscriptions = Table(
    "push_topic_subscriptions",
    metadata,
    Column("device_id", BigId, ForeignKey("push_devices.id", ondelete="CASCADE"), primary_key=True),
    Column("topic", String(100), primary_key=True),
    Column("project_id", Integer, _project_fk(), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_push_topic_subscriptions_topic", "project_id", "topic"),
)

# Per app user: segment properties, timezone, quiet hours and caps.
users = Table(
    "push_users",
    metadata,
    Column("project_id", Integer, _project_fk(), primary_key=True),
    Column("user_id", String(200), primary_key=True),
    Column("properties", Json, nullable=False, default=dict),
    Column("timezone", String(64), nullable=True),
    Column("locale", String(35), nullable=True),
    Column("quiet_start", String(5), nullable=True),  # HH:MM local
    Column("quiet_end", String(5), nullable=True),
    Column("quiet_timezone", String(64), nullable=True),
    Column("daily_cap", Integer, nullable=True),
    Column("hourly_cap", Integer, nullable=True),  # at most N in any 60 minutes (push_0002)
    Column("category_caps", Json, nullable=True),  # {category: N per local day} (push_0002)
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

user_categories = Table(
    "push_user_categories",
    metadata,
    Column("project_id", Integer, _project_fk(), primary_key=True),
    Column("user_id", String(200), primary_key=True),
    Column("category", String(64), primary_key=True),
    Column("enabled", Boolean, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

categories = Table(
    "push_categories",
    metadata,
    Column("project_id", Integer, _project_fk(), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("description", String(500), nullable=False, default=""),
    Column("critical", Boolean, nullable=False, default=False),
    Column("default_enabled", Boolean, nullable=False, default=True),
    Column("daily_cap", Integer, nullable=True),
    Column("hourly_cap", Integer, nullable=True),  # per user, any 60 minutes (push_0002)
    Column("digest_window_seconds", Integer, nullable=True),
    Column("digest_title", String(200), nullable=True),
    Column("digest_body", String(500), nullable=True),
    Column("channel_id", String(100), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

templates = Table(
    "push_templates",
    metadata,
    Column("project_id", Integer, _project_fk(), primary_key=True),
    Column("name", String(100), primary_key=True),
    Column("default_locale", String(35), nullable=False),
    Column("texts", Json, nullable=False),  # {locale: {"title": ..., "body": ...}}
    Column("category", String(64), nullable=True),
    Column("data", Json, nullable=False, default=dict),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

# Provider credentials: the secret part encrypted with ctx.box, never returned by the API.
credentials = Table(
    "push_credentials",
    metadata,
    Column("project_id", Integer, _project_fk(), primary_key=True),
    Column("provider", String(8), primary_key=True),
    Column("secret", Text, nullable=True),
    Column("meta", Json, nullable=False, default=dict),
    Column("paused_reason", String(500), nullable=True),
    Column("paused_at", UtcDateTime, nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
)

# Project-level push configuration: how app user tokens are verified.
config = Table(
    "push_config",
    metadata,
    Column("project_id", Integer, _project_fk(), primary_key=True),
    Column("jwt_secret", Text, nullable=True),  # encrypted HS256 secret (Supabase's JWT secret)
    Column("jwks_url", String(500), nullable=True),
    Column("jwt_audience", String(200), nullable=True),
    Column("jwt_issuer", String(500), nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
)

# One send request (API, CLI, event rule or Expo ingress) and its schedule.
sends = Table(
    "push_sends",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", Integer, _project_fk(), nullable=False),
    Column("idempotency_key", String(255), nullable=True),
    Column("request_hash", String(64), nullable=True),
    Column("source", String(16), nullable=False),  # api | cli | event | expo
    Column("campaign", String(100), nullable=True),
    Column("category", String(64), nullable=True),
    Column("template", String(100), nullable=True),
    Column("target", Json, nullable=False),
    Column("payload", Json, nullable=False),
    Column("variables", Json, nullable=False, default=dict),
    Column("schedule", Json, nullable=False),
    Column("status", String(16), nullable=False),  # queued | scheduled | recurring | done | cancelled | failed
    Column("error", Text, nullable=True),
    Column("recipients", Integer, nullable=False, default=0),
    Column("occurrences", Integer, nullable=False, default=0),
    Column("next_run_at", UtcDateTime, nullable=True),
    Column("created_by", String(200), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=True),
    Column("cancelled_at", UtcDateTime, nullable=True),
    UniqueConstraint("project_id", "idempotency_key", name="uq_push_sends_idempotency"),
    Index("ix_push_sends_project", "project_id", "id"),
)

# One notification to one device (seed NotificationLog). The id travels in the payload
# (``data._sid``) so the app can report opens.
messages = Table(
    "push_messages",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", Integer, _project_fk(), nullable=False),
    Column("send_id", BigId, ForeignKey("push_sends.id", ondelete="CASCADE"), nullable=False),
    Column("occurrence", String(32), nullable=False, default=""),
    Column("device_id", BigId, ForeignKey("push_devices.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", String(200), nullable=True),
    Column("provider", String(8), nullable=False),
    Column("category", String(64), nullable=True),
    Column("campaign", String(100), nullable=True),
    Column("template", String(100), nullable=True),
    Column("title", Text, nullable=True),
    Column("body", Text, nullable=True),
    Column("payload", Json, nullable=False),
    # queued | scheduled | deferred | digesting | sent | delivered | failed | suppressed | collapsed | cancelled
    Column("status", String(16), nullable=False),
    Column("reason", Text, nullable=True),
    Column("due_at", UtcDateTime, nullable=False),
    Column("digest_key", String(64), nullable=True),
    Column("digest_count", Integer, nullable=False, default=1),
    Column("digest_of", String(36), nullable=True),
    Column("ticket_id", String(64), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", UtcDateTime, nullable=False),
    Column("sent_at", UtcDateTime, nullable=True),
    Column("delivered_at", UtcDateTime, nullable=True),
    Column("failed_at", UtcDateTime, nullable=True),
    Column("opened_at", UtcDateTime, nullable=True),
    UniqueConstraint("send_id", "occurrence", "device_id", name="uq_push_messages_once"),
    Index("ix_push_messages_user", "project_id", "user_id", "created_at"),
    Index("ix_push_messages_device_status", "device_id", "status"),
    Index("ix_push_messages_ticket", "ticket_id"),
    Index("ix_push_messages_project_created", "project_id", "created_at"),
)

# Decisions and transitions per message: deferred for quiet hours, collapsed into a digest,
# suppressed by a cap or an opt-out, retried, failed with the provider's reason, opened.
message_events = Table(
    "push_message_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("message_id", String(36), ForeignKey("push_messages.id", ondelete="CASCADE"), nullable=False),
    Column("project_id", Integer, _project_fk(), nullable=False),
    Column("ts", UtcDateTime, nullable=False),
    Column("event", String(32), nullable=False),
    Column("details", Json, nullable=False, default=dict),
    Index("ix_push_message_events_message", "message_id", "id"),
)

# Event-driven rules: a domain event posted by the app backend becomes a notification.
rules = Table(
    "push_rules",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", Integer, _project_fk(), nullable=False),
    Column("name", String(100), nullable=False),
    Column("event", String(100), nullable=False),
    Column("recipient_field", String(100), nullable=False, default="user_id"),
    Column("category", String(64), nullable=True),
    Column("template", String(100), nullable=False),
    Column("delay_seconds", Integer, nullable=False, default=0),
    Column("digest_window_seconds", Integer, nullable=True),
    Column("deep_link_route", String(100), nullable=True),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("project_id", "name", name="uq_push_rules_name"),
    Index("ix_push_rules_event", "project_id", "event"),
)

events = Table(
    "push_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", Integer, _project_fk(), nullable=False),
    Column("event", String(100), nullable=False),
    Column("idempotency_key", String(255), nullable=True),
    Column("properties", Json, nullable=False),
    Column("send_ids", Json, nullable=False, default=list),
    Column("received_at", UtcDateTime, nullable=False),
    UniqueConstraint("project_id", "idempotency_key", name="uq_push_events_idempotency"),
)

link_routes = Table(
    "push_link_routes",
    metadata,
    Column("project_id", Integer, _project_fk(), primary_key=True),
    Column("name", String(100), primary_key=True),
    Column("template", String(500), nullable=False),  # e.g. canabro://plants/{plantId}
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

link_engagements = Table(
    "push_link_engagements",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", Integer, _project_fk(), nullable=False),
    Column("link_id", String(64), nullable=False),
    Column("route", String(100), nullable=True),
    Column("campaign", String(100), nullable=True),
    Column("source", String(16), nullable=False),
    Column("outcome", String(16), nullable=False),  # success | failure | ignored
    Column("user_id", String(200), nullable=True),
    Column("ts", UtcDateTime, nullable=False),
    Index("ix_push_link_engagements_campaign", "project_id", "campaign"),
)
