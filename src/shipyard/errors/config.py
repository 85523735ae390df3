"""Per-project errors settings: the project's settings JSON (key ``errors``) over server defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pydantic import BaseModel, Field

from shipyard.settings import Settings

SETTINGS_KEY = "errors"


@dataclass(frozen=True)
class ProjectConfig:
    events_per_minute: int
    events_per_hour: int
    transactions_per_minute: int
    transactions_per_hour: int
    store_ip: bool
    retention_days: int
    max_events: int
    fix_verification_days: int
    scrub_defaults: bool = True
    scrub_fields: tuple[str, ...] = field(default_factory=tuple)
    safe_fields: tuple[str, ...] = field(default_factory=tuple)
    store_attachments: bool = True
    alert_new_issue: bool = True
    alert_regression: bool = True

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scrub_fields"] = list(self.scrub_fields)
        data["safe_fields"] = list(self.safe_fields)
        return data


class ProjectConfigUpdate(BaseModel):
    """What an admin may change (every field optional; omitted fields keep their value)."""

    events_per_minute: int | None = Field(
        None, ge=0, le=1_000_000_000, description="Error/message events per minute (0 = no quota)."
    )
    events_per_hour: int | None = Field(
        None, ge=0, le=1_000_000_000, description="Error/message events per hour (0 = no quota)."
    )
    transactions_per_minute: int | None = Field(None, ge=0, le=1_000_000_000)
    transactions_per_hour: int | None = Field(None, ge=0, le=1_000_000_000)
    store_ip: bool | None = Field(None, description="Store client IP addresses with events and sessions.")
    retention_days: int | None = Field(None, ge=1, le=3650)
    max_events: int | None = Field(None, ge=100, le=1_000_000_000)
    fix_verification_days: int | None = Field(None, ge=1, le=365)
    scrub_defaults: bool | None = Field(None, description="Apply the default secret/PII scrubbing rules.")
    scrub_fields: list[str] | None = Field(
        None, max_length=100, description="Extra field names whose values are always removed (case-insensitive)."
    )
    safe_fields: list[str] | None = Field(
        None, max_length=100, description="Field names never scrubbed by the default name rules."
    )
    store_attachments: bool | None = Field(None, description="Keep attachments (screenshots, view hierarchies).")
    alert_new_issue: bool | None = Field(None, description="Raise an alert for every new issue.")
    alert_regression: bool | None = Field(None, description="Raise an alert when a resolved issue regresses.")


def defaults(settings: Settings) -> dict[str, Any]:
    return {
        "events_per_minute": settings.errors_events_per_minute,
        "events_per_hour": settings.errors_events_per_hour,
        "transactions_per_minute": settings.errors_transactions_per_minute,
        "transactions_per_hour": settings.errors_transactions_per_hour,
        "store_ip": settings.errors_store_ip,
        "retention_days": settings.errors_retention_days,
        "max_events": settings.errors_max_events_per_project,
        "fix_verification_days": settings.errors_fix_verification_days,
    }


def project_config(settings: Settings, project_settings: dict[str, Any]) -> ProjectConfig:
    values = defaults(settings)
    own = project_settings.get(SETTINGS_KEY) or {}
    known = {f.name for f in fields(ProjectConfig)}
    values.update({k: v for k, v in own.items() if k in known and v is not None})
    values["scrub_fields"] = tuple(str(f) for f in values.get("scrub_fields") or ())
    values["safe_fields"] = tuple(str(f) for f in values.get("safe_fields") or ())
    return ProjectConfig(**values)
