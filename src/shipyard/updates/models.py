"""Tables of the OTA updates feature (all prefixed ``updates_``).

Vocabulary follows EAS Update: a *channel* (what a build asks for in the
``expo-channel-name`` header) points at a *branch*; a publish creates an *update group*
holding one *update* per platform on that branch; an update references content-addressed
*assets* (deduplicated per project; the bytes live once in the blob store).
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from shipyard.core.db import BigId, Json, UtcDateTime, metadata

branches = Table(
    "updates_branches",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("project_id", "name", name="uq_updates_branches_project_name"),
)

channels = Table(
    "updates_channels",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("branch_id", ForeignKey("updates_branches.id"), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("project_id", "name", name="uq_updates_channels_project_name"),
)

# One publish (or republish, rollback, promotion): the ios and android updates it created.
groups = Table(
    "updates_groups",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("branch_id", ForeignKey("updates_branches.id"), nullable=False),
    Column("kind", String(30), nullable=False),  # publish | republish | rollback | rollback_to_embedded | promote
    Column("message", Text, nullable=False, default=""),
    Column("source_group_id", String(36), nullable=True),  # what a republish/promotion copied
    Column("critical", Boolean, nullable=False, default=False),
    Column("critical_index", Integer, nullable=False, default=0),
    Column("min_app_version", String(50), nullable=True),
    Column("actor", String(200), nullable=True),
    # active | rolled_back: a rolled-back group is never chosen again as "the previous update".
    Column("status", String(20), nullable=False, default="active"),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_updates_groups_project_created", "project_id", "created_at"),
)

updates = Table(
    "updates_updates",
    metadata,
    Column("id", String(36), primary_key=True),  # the manifest id (UUID)
    Column("group_id", ForeignKey("updates_groups.id", ondelete="CASCADE"), nullable=False),
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("branch_id", ForeignKey("updates_branches.id"), nullable=False),
    Column("platform", String(10), nullable=False),
    Column("runtime_version", String(255), nullable=False),
    # Server-side, millisecond precision, strictly increasing per (branch, runtime, platform).
    Column("created_at", UtcDateTime, nullable=False),
    Column("kind", String(30), nullable=False, default="update"),  # update | rollback_to_embedded
    # The manifest minus what is computed at serve time (asset URLs): see service.build_manifest.
    Column("manifest", Json, nullable=False),
    # The update devices outside a staged rollout get (the previous one on the branch).
    Column("control_update_id", String(36), nullable=True),
    Column("min_app_version", String(50), nullable=True),
    Column("critical_index", Integer, nullable=False, default=0),
    Index("ix_updates_updates_lookup", "project_id", "branch_id", "runtime_version", "platform", "created_at"),
    Index("ix_updates_updates_group", "group_id"),
)

# Files a project has uploaded: the bytes are in the blob store under their SHA-256 hex.
blobs = Table(
    "updates_blobs",
    metadata,
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("blob_key", String(64), primary_key=True),
    Column("size", Integer, nullable=False),
    Column("md5", String(32), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

# An asset as served: bytes plus content type (EAS's storage key), with compressed variants.
assets = Table(
    "updates_assets",
    metadata,
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("storage_key", String(43), primary_key=True),
    Column("blob_key", String(64), nullable=False),
    Column("content_type", String(100), nullable=False),
    Column("hash", String(43), nullable=False),  # base64url SHA-256, the manifest's `hash`
    Column("size", Integer, nullable=False),
    Column("gzip_key", String(64), nullable=True),
    Column("br_key", String(64), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
)

update_assets = Table(
    "updates_update_assets",
    metadata,
    Column("update_id", ForeignKey("updates_updates.id", ondelete="CASCADE"), primary_key=True),
    Column("storage_key", String(43), primary_key=True),
    Column("project_id", Integer, nullable=False),
    Column("is_launch", Boolean, nullable=False, default=False),
)

rollouts = Table(
    "updates_rollouts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("group_id", ForeignKey("updates_groups.id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("branch_id", ForeignKey("updates_branches.id"), nullable=False),
    Column("status", String(20), nullable=False),  # active | halted | completed | rolled_back | superseded
    Column("percentage", Float, nullable=False),
    # Bucketing salt: kept when a hotfix supersedes the rollout, so its devices stay in.
    Column("salt", String(64), nullable=False),
    Column("increment", Float, nullable=True),  # plan: +increment every interval_minutes up to max
    Column("interval_minutes", Integer, nullable=True),
    Column("max_percentage", Float, nullable=True),
    Column("next_step_at", UtcDateTime, nullable=True),
    Column("reason", Text, nullable=True),
    Column("started_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("ended_at", UtcDateTime, nullable=True),
    Index("ix_updates_rollouts_status", "status"),
)

policies = Table(
    "updates_policies",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("channel_id", ForeignKey("updates_channels.id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("min_devices", Integer, nullable=False),
    Column("max_failed_launch_rate", Float, nullable=True),
    Column("max_margin_over_control", Float, nullable=True),
    # Per-signal thresholds: {"signal": {"max": x} | {"min": x} | {"margin": x}}.
    Column("rules", Json, nullable=False),
    Column("action", String(20), nullable=False),  # halt | rollback
    Column("updated_at", UtcDateTime, nullable=False),
)

signing_keys = Table(
    "updates_signing_keys",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("keyid", String(100), nullable=False),
    Column("private_key_enc", Text, nullable=False),  # PEM, encrypted with ctx.box
    Column("certificate_pem", Text, nullable=False),
    Column("chain_pem", Text, nullable=True),  # sent as the certificate_chain part when set
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", UtcDateTime, nullable=False),
)

# Latest state each installation (EAS-Client-ID) reported on its manifest requests.
devices = Table(
    "updates_devices",
    metadata,
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("client_id", String(64), primary_key=True),
    Column("platform", String(10), nullable=False),
    Column("runtime_version", String(255), nullable=False),
    Column("channel", String(100), nullable=False),
    Column("current_update_id", String(36), nullable=True),
    Column("embedded_update_id", String(36), nullable=True),
    Column("first_seen", UtcDateTime, nullable=False),
    Column("last_seen", UtcDateTime, nullable=False),
    Index("ix_updates_devices_channel", "project_id", "channel"),
)

# Per (update, installation): was it served, did it run, did it fail to launch.
device_updates = Table(
    "updates_device_updates",
    metadata,
    Column("update_id", String(36), primary_key=True),
    Column("client_id", String(64), primary_key=True),
    Column("project_id", Integer, nullable=False),
    Column("served_at", UtcDateTime, nullable=True),
    Column("ran_at", UtcDateTime, nullable=True),
    Column("failed_at", UtcDateTime, nullable=True),
    Index("ix_updates_device_updates_project", "project_id", "client_id"),
)

fatal_errors = Table(
    "updates_fatal_errors",
    metadata,
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("update_id", String(36), primary_key=True),  # "" when the device named none
    Column("fingerprint", String(40), primary_key=True),
    Column("message", Text, nullable=False),
    Column("count", Integer, nullable=False),
    Column("first_seen", UtcDateTime, nullable=False),
    Column("last_seen", UtcDateTime, nullable=False),
)

# Seed DeploymentHistory: one row per update group shipped to a channel, plus its events.
deployments = Table(
    "updates_deployments",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("group_id", ForeignKey("updates_groups.id", ondelete="CASCADE"), nullable=False),
    Column("version", String(200), nullable=False),
    Column("channel", String(100), nullable=False),
    Column("branch", String(100), nullable=False),
    Column("runtime_versions", Json, nullable=False),
    Column("status", String(20), nullable=False),  # pending | active | rolled_back | failed
    Column("rollout_percentage", Float, nullable=False),
    Column("devices_affected", Integer, nullable=False, default=0),
    Column("error_rate", Float, nullable=True),
    Column("metadata", Json, nullable=False),
    Column("deployed_at", UtcDateTime, nullable=False),
    Column("rolled_back_at", UtcDateTime, nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_updates_deployments_project", "project_id", "id"),
    Index("ix_updates_deployments_group", "group_id"),
)

deployment_events = Table(
    "updates_deployment_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("deployment_id", ForeignKey("updates_deployments.id", ondelete="CASCADE"), nullable=False),
    Column("project_id", Integer, nullable=False),
    Column("kind", String(40), nullable=False),  # published | rollout_changed | halted | resumed | ...
    Column("status", String(20), nullable=False),
    Column("rollout_percentage", Float, nullable=False),
    Column("details", Json, nullable=False),
    Column("actor", String(200), nullable=True),
    Column("at", UtcDateTime, nullable=False),
    Index("ix_updates_deployment_events_dep", "deployment_id", "id"),
)
