"""One typed registry of every Shipyard setting.

Each setting is read from a ``SHIPYARD_<NAME>`` environment variable, or from the TOML
file named by ``SHIPYARD_CONFIG`` (keys are the lower-case field names). Every field
carries a description saying what it does and why its default is what it is; a test
fails when one does not, and ``docs/settings.md`` is generated from this file
(``shipyard settings --markdown``).

Features add their settings in their own block below so that work on two features
never edits the same lines.
"""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHIPYARD_", extra="ignore", validate_default=True)

    # --- core -------------------------------------------------------------------------
    mode: Literal["development", "production"] = Field(
        "development",
        description="`production` refuses to start without an explicit secret key and public URL, "
        "and marks session cookies Secure. Development generates what it needs in the data dir.",
    )
    data_dir: Path = Field(
        Path("./shipyard-data"),
        description="Directory for the SQLite database, the local blob store, backups and the "
        "generated secret key. Relative paths are resolved against the working directory.",
    )
    database_url: str = Field(
        "",
        description="`sqlite:///path/to/db` or `postgresql://user@host/db`. Empty means SQLite at "
        "`<data_dir>/shipyard.db`, so a newcomer needs no database server.",
    )
    redis_url: str = Field(
        "",
        description="Optional `redis://host:6379/0`. When set, rate-limit counters, circuit-breaker "
        "state and cache invalidation are shared across processes; when empty they live in memory.",
    )
    public_url: str = Field(
        "http://127.0.0.1:8000",
        description="The base URL apps and browsers reach this server at; used in DSNs, manifest "
        "URLs, asset URLs and links in alerts.",
    )
    secret_key: str = Field(
        "",
        description="Server secret for session signing, the audit hash chain and the key that "
        "encrypts stored secrets. Empty in development: generated once into `<data_dir>/secret.key`. "
        "Required in production.",
    )
    previous_secret_keys: list[str] = Field(
        default_factory=list,
        description="Older server secrets still accepted for decrypting stored secrets while "
        "`shipyard secrets rotate` re-encrypts them under the current key.",
    )
    host: str = Field("127.0.0.1", description="Address `shipyard serve` binds to.")
    port: int = Field(8000, description="Port `shipyard serve` binds to.")
    auto_migrate: bool = Field(
        True, description="Apply database migrations when the server starts, so one command is enough."
    )
    embedded_worker: bool = Field(
        True,
        description="Run the background worker inside `shipyard serve`. Turn off when dedicated "
        "`shipyard worker` processes run (scale-out).",
    )
    log_level: str = Field("INFO", description="Log level for the structured JSON logs.")
    log_format: Literal["json", "console"] = Field(
        "json", description="`json` for machines (default), `console` for humans at a terminal."
    )
    db_pool_size: int = Field(10, description="Connections per process to PostgreSQL.")
    sqlite_synchronous: Literal["NORMAL", "FULL"] = Field(
        "NORMAL",
        description="SQLite `synchronous` pragma. NORMAL in WAL mode survives a process crash with "
        "every acknowledged write; FULL also survives power loss at a throughput cost.",
    )
    allow_private_outbound: bool = Field(
        False,
        description="Allow user-configured outbound URLs (webhooks, providers) to point at private or "
        "loopback addresses. Off by default to block SSRF; on for tests and on-premise setups.",
    )
    max_body_bytes: int = Field(
        20 * 1024 * 1024,
        description="Largest request body accepted (413 above it). Sentry envelopes go up to 20 MB.",
    )
    max_decompressed_bytes: int = Field(
        100 * 1024 * 1024,
        description="Largest size a compressed request body may expand to (413 above it), so a "
        "small zip bomb cannot exhaust memory.",
    )
    cors_origins: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Origins allowed to call the client-facing routes from a browser (web builds of "
        "the app). Admin routes never send CORS headers.",
    )
    rate_limit_per_ip: str = Field(
        "6000/minute", description="Requests allowed per client IP across all routes (`limits` syntax)."
    )
    rate_limit_per_key: str = Field(
        "60000/minute",
        description="Requests allowed per API key across all routes (`limits` syntax). Ingest "
        "routes also apply their own protocol-level quotas.",
    )
    session_ttl_hours: int = Field(12, description="Lifetime of a dashboard login session.")
    login_max_failures: int = Field(
        5, description="Failed logins in a row after which an account is locked for a while."
    )
    login_lockout_minutes: int = Field(15, description="How long an account stays locked.")
    require_totp_for_admins: bool = Field(
        False, description="Require a TOTP second factor for owners and admins at dashboard login."
    )
    key_rotation_overlap_hours: int = Field(
        24, description="How long a rotated secret key keeps working so deploys can switch over."
    )
    blob_backend: Literal["local", "s3"] = Field(
        "local", description="Where update assets and other immutable blobs live."
    )
    s3_endpoint_url: str = Field("", description="S3-compatible endpoint (empty means AWS).")
    s3_bucket: str = Field("", description="Bucket for blobs when `blob_backend` is `s3`.")
    s3_region: str = Field("us-east-1", description="Region for S3 request signing.")
    s3_access_key_id: str = Field("", description="S3 access key id (empty: the default AWS chain).")
    s3_secret_access_key: str = Field("", description="S3 secret access key.")
    s3_presign: bool = Field(False, description="Serve S3 blobs through presigned URLs instead of proxying them.")
    cdn_base_url: str = Field(
        "", description="Optional CDN in front of blob storage; asset URLs are built on it when set."
    )
    backup_retention: int = Field(7, description="How many backups `shipyard backup create` keeps.")
    job_lease_seconds: int = Field(
        60,
        description="How long a worker holds a job before another worker may take it over; a worker "
        "that dies mid-job therefore delays that job by at most this long.",
    )
    job_poll_interval: float = Field(0.5, description="Seconds an idle worker waits before looking for due jobs again.")
    job_concurrency: int = Field(8, description="Jobs one worker process runs at once.")
    job_max_attempts: int = Field(10, description="Attempts before a failing job goes to the dead-letter state.")
    audit_checkpoint_interval_minutes: int = Field(
        60, description="How often a signed checkpoint of the audit chain head is written."
    )

    # --- updates (OTA) ----------------------------------------------------------------

    # --- errors -----------------------------------------------------------------------

    # --- push -------------------------------------------------------------------------

    # --- analytics --------------------------------------------------------------------

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("SHIPYARD_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    # --- derived values ---------------------------------------------------------------

    @cached_property
    def resolved_data_dir(self) -> Path:
        path = self.data_dir.expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'shipyard.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @cached_property
    def resolved_secret_key(self) -> str:
        if self.secret_key:
            return self.secret_key
        if self.mode == "production":
            raise RuntimeError("SHIPYARD_SECRET_KEY is required when SHIPYARD_MODE=production")
        key_file = self.resolved_data_dir / "secret.key"
        if not key_file.exists():
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
        return key_file.read_text().strip()

    @property
    def public_base(self) -> str:
        return self.public_url.rstrip("/")

    def check_production(self) -> None:
        """Refuse to run in production with development conveniences."""
        if self.mode != "production":
            return
        if not self.secret_key:
            raise RuntimeError("SHIPYARD_SECRET_KEY is required when SHIPYARD_MODE=production")
        if self.public_url.startswith("http://127.0.0.1"):
            raise RuntimeError("SHIPYARD_PUBLIC_URL must be set when SHIPYARD_MODE=production")


def describe_settings() -> list[dict[str, Any]]:
    """Every setting with its env var, default and description, for docs and the CLI."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        rows.append(
            {
                "name": name,
                "env": f"SHIPYARD_{name.upper()}",
                "default": default,
                "description": field.description or "",
            }
        )
    return rows
