"""Per-project analytics settings, stored under ``"analytics"`` in the project's settings JSON."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shipyard.core.projects import Project
from shipyard.settings import Settings

PURPOSES = ("analytics", "crash_reporting", "push", "marketing")


class AnalyticsConfig(BaseModel):
    """What a project decides about collection, privacy and the tracking plan."""

    model_config = ConfigDict(extra="forbid")

    consent_mode: Literal["off", "opt_out", "opt_in"] = Field(
        "opt_out",
        description="`opt_out`: collect unless the user withdrew analytics consent; `opt_in`: collect only "
        "after the user granted it; `off`: ignore consent records.",
    )
    consent_action: Literal["drop", "anonymise"] = Field(
        "drop",
        description="What happens to an event from a user without analytics consent: dropped, or stored "
        "without any persistent id (daily-salted hash), traits, device ids or IP. Both are counted.",
    )
    ip_mode: Literal["full", "truncate", "none"] = Field(
        "truncate", description="Store client IPs in full, truncated (IPv4 /24, IPv6 /48), or not at all."
    )
    privacy_mode: bool = Field(
        False,
        description="No persistent ids at all (Aptabase style): every id is replaced by a hash with a "
        "random salt that changes daily and is deleted after two days; identify traits and aliases are "
        "not stored, IPs are not stored.",
    )
    session_timeout_minutes: int | None = Field(
        None, ge=1, le=24 * 60, description="Inactivity that ends a session (default: the server setting)."
    )
    raw_retention_days: int | None = Field(
        None, ge=1, le=3650, description="Days raw events are kept (default: the server setting)."
    )
    plan_enforcement: Literal["off", "record", "block"] = Field(
        "record",
        description="Tracking plan: `record` violations, also `block` violating events, or `off`. Only "
        "applies once the project has at least one event schema.",
    )

    def session_timeout_ms(self, settings: Settings) -> int:
        minutes = self.session_timeout_minutes or settings.analytics_session_timeout_minutes
        return minutes * 60_000

    def retention_days(self, settings: Settings) -> int:
        return self.raw_retention_days or settings.analytics_raw_retention_days


def config_of(project: Project) -> AnalyticsConfig:
    raw: Any = project.settings.get("analytics") or {}
    try:
        return AnalyticsConfig.model_validate(raw)
    except ValueError:
        # A hand-edited settings blob must not stop ingest; fall back to defaults.
        return AnalyticsConfig()
