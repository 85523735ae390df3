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


class ConfigError(RuntimeError):
    """A setting is missing or invalid; the CLI prints the message, not a traceback."""


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
    db_pool_size: int = Field(
        10,
        description="Connections per process kept open to PostgreSQL (as many more may open under "
        "load). SQLite keeps four times as many: its connections are cheap to keep, costly to open.",
    )
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
        "6000/minute",
        description="Requests allowed per client IP on the admin API, the dashboard and the API docs "
        "(`limits` syntax, e.g. `100/second`; empty turns it off). Health, readiness and metrics "
        "probes are never limited.",
    )
    rate_limit_per_key: str = Field(
        "60000/minute",
        description="Requests allowed per secret key or dashboard session on the admin API and the "
        "dashboard (`limits` syntax; empty turns it off).",
    )
    rate_limit_client_per_ip: str = Field(
        "",
        description="Gateway limit per client IP on client-facing routes (ingest, manifests, flags). "
        "Off by default: each protocol enforces its own per-project quotas, and thousands of app "
        "users can share one carrier-NAT address. Set e.g. `200000/minute` as a flood guard.",
    )
    rate_limit_client_per_key: str = Field(
        "",
        description="Gateway limit per public key (DSN key, write key, OFREP bearer) on client-facing "
        "routes. Off by default for the same reason: feature quotas answer in the client's own "
        "protocol (e.g. Sentry's `X-Sentry-Rate-Limits`), which SDKs honour better than a bare 429.",
    )
    access_log: bool = Field(
        True,
        description="Write one JSON access-log line per request (method, route, status, duration, "
        "request id). Turn off only when a proxy in front already logs every request.",
    )
    metrics_token: str = Field(
        "",
        description="When set, `/metrics` requires `Authorization: Bearer <token>`; empty leaves it "
        "open (bind to a private network, as Prometheus targets usually are).",
    )
    worker_heartbeat_timeout_seconds: int = Field(
        60,
        description="`/readyz` reports not ready when no worker has sent a heartbeat for this long "
        "(workers beat every 10 s), because queued jobs would then never run.",
    )
    readyz_require_worker: bool = Field(
        True,
        description="Whether `/readyz` requires a live background worker (embedded or `shipyard "
        "worker`). Turn off for API nodes whose readiness must not depend on the workers.",
    )
    db_connect_timeout: float = Field(
        5.0,
        description="Seconds to wait for a new PostgreSQL connection. Short, so that while the "
        "database is away requests answer 503 quickly instead of hanging.",
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
    job_shutdown_grace_seconds: float = Field(
        20.0,
        description="On SIGTERM/SIGINT a worker stops claiming and lets running jobs finish for up to "
        "this long; jobs still running then are cancelled and put back in the queue at once (not after "
        "their lease), without counting the attempt.",
    )
    audit_checkpoint_interval_minutes: int = Field(
        60, description="How often a signed checkpoint of the audit chain head is written."
    )

    # --- updates (OTA) ----------------------------------------------------------------
    updates_cache_seconds: float = Field(
        5.0,
        description="How long a process serves a channel's resolved updates (and signed manifest bytes) "
        "from memory before re-reading them. Changes made in this process invalidate at once; other "
        "processes (separate workers, other nodes) see them within this many seconds.",
    )
    updates_report_flush_seconds: float = Field(
        1.0,
        description="How often device reports gathered from manifest requests (current, embedded and "
        "failed update ids, fatal errors) are written to the database in one transaction, instead of "
        "one write per request.",
    )
    updates_max_asset_bytes: int = Field(
        100 * 1024 * 1024,
        description="Largest single file (bundle or asset) a publish may upload (413 above it).",
    )
    updates_asset_redirect: bool = Field(
        True,
        description="When the blob store has a public URL for an asset (CDN base URL or S3 presigning), "
        "answer asset requests with a 302 to it so bytes do not flow through this server.",
    )
    updates_default_min_devices: int = Field(
        50,
        description="Default minimum number of devices behind a health reading before a rollout policy "
        "may act on it, so two early crashes do not halt a rollout.",
    )
    updates_default_max_failed_launch_rate: float = Field(
        0.02, description="Default failed-launch rate above which a channel's rollout policy trips (2 %)."
    )

    # --- errors -----------------------------------------------------------------------
    errors_max_request_bytes: int = Field(
        20 * 1024 * 1024,
        description="Largest (compressed) Sentry ingest request body; 413 above it. Sentry's documented limit.",
    )
    errors_max_envelope_bytes: int = Field(
        100 * 1024 * 1024,
        description="Largest decompressed Sentry envelope; 413 above it, so a small compression bomb is refused.",
    )
    errors_max_event_bytes: int = Field(
        1024 * 1024, description="Largest event or transaction item in an envelope (Sentry's limit); 413 above it."
    )
    errors_max_attachment_bytes: int = Field(
        100 * 1024 * 1024, description="Largest attachment item (Sentry's limit); 413 above it."
    )
    errors_events_per_minute: int = Field(
        6000,
        description="Default per-project quota of error and message events per minute (0 = none); projects "
        "override it. Over quota answers 429 with Retry-After and X-Sentry-Rate-Limits so SDKs back off.",
    )
    errors_events_per_hour: int = Field(
        120_000, description="Default per-project quota of error and message events per hour (0 = none)."
    )
    errors_transactions_per_minute: int = Field(
        12_000, description="Default per-project quota of transactions per minute (0 = none)."
    )
    errors_transactions_per_hour: int = Field(
        240_000, description="Default per-project quota of transactions per hour (0 = none)."
    )
    errors_store_ip: bool = Field(
        True,
        description="Default for storing client IP addresses with events and sessions (Sentry's default); a "
        "project can turn it off in its errors settings.",
    )
    errors_retention_days: int = Field(
        90, description="Default age after which events, transactions and feedback are purged; issues keep counts."
    )
    errors_max_events_per_project: int = Field(
        1_000_000,
        description="Default cap on stored events per project; the oldest beyond it are purged (issues keep counts).",
    )
    errors_fix_verification_days: int = Field(
        7,
        description="A resolved issue with no regression for this many days is marked verified (fix verified).",
    )
    errors_digest_batch: int = Field(
        250, description="Envelopes the digester processes per transaction (larger: faster, longer write locks)."
    )
    errors_digest_idle_seconds: float = Field(
        2.0,
        description="How long a digest job waits for new envelopes before ending; a new one is started on demand.",
    )
    errors_claim_seconds: int = Field(
        120,
        description="How long a digester holds a batch of envelopes; a digester that dies loses its claim "
        "and another one reprocesses the batch after this long.",
    )

    # --- push -------------------------------------------------------------------------
    push_expo_url: str = Field(
        "https://exp.host",
        description="Base URL of the Expo Push API (`/--/api/v2/push/send` and `/getReceipts` below it). "
        "Changed only to point at a test double or a relay.",
    )
    push_fcm_url: str = Field(
        "https://fcm.googleapis.com",
        description="Base URL of FCM HTTP v1 (`/v1/projects/{id}/messages:send`).",
    )
    push_fcm_token_url: str = Field(
        "",
        description="OAuth2 token endpoint for FCM service accounts. Empty: the `token_uri` of the "
        "service-account JSON (Google's `https://oauth2.googleapis.com/token`).",
    )
    push_apns_url: str = Field(
        "",
        description="APNs base URL. Empty: `https://api.push.apple.com` for production credentials and "
        "`https://api.sandbox.push.apple.com` for development ones.",
    )
    push_expo_concurrency: int = Field(
        6,
        description="Concurrent requests to Expo per process; Expo asks senders to stay at or under 6.",
    )
    push_batch_size: int = Field(
        100, description="Notifications per delivery job and per Expo request (Expo's limit is 100)."
    )
    push_receipt_delay_seconds: int = Field(
        900,
        description="How long after sending Expo receipts are fetched; Expo recommends about 15 minutes "
        "and keeps receipts for 24 hours.",
    )
    push_stale_device_days: int = Field(
        90,
        description="Devices not seen (registered, updated or opened a notification) for this many days "
        "are deactivated by the daily pruning job; their tokens are most likely dead.",
    )
    push_circuit_failures: int = Field(
        5, description="Provider failures within `push_circuit_window_seconds` that open its circuit (seed: 5 in 60 s)."
    )
    push_circuit_window_seconds: float = Field(60.0, description="Window in which provider failures are counted.")
    push_circuit_cooldown_seconds: float = Field(
        30.0, description="How long an open provider circuit fails fast before one trial request is let through."
    )
    push_link_ttl_hours: int = Field(
        24 * 30, description="Default lifetime of a signed deep link generated by the server."
    )
    push_max_recipients: int = Field(
        100_000, description="Largest number of devices one send may resolve to (larger sends are refused with 400)."
    )

    # --- analytics --------------------------------------------------------------------
    analytics_max_message_bytes: int = Field(
        32 * 1024,
        description="Largest single Segment message (bytes of JSON). Segment's documented limit is 32 KB; "
        "larger messages answer 400 like Segment does.",
    )
    analytics_max_batch_bytes: int = Field(
        500 * 1024,
        description="Largest `/v1/batch` (or `/v1/b`, `/v1/import`) body after decompression. Segment's "
        "documented limit is 500 KB; larger batches answer 400.",
    )
    analytics_max_batch_events: int = Field(
        2500, description="Most messages in one batch (Segment's documented limit); more answer 400."
    )
    analytics_rate_limit: str = Field(
        "1000/second",
        description="Ingest requests allowed per project (`limits` syntax). Segment recommends at most "
        "1,000 requests/s per workspace; excess answers 429 with Retry-After, which the SDKs honour.",
    )
    analytics_session_timeout_minutes: int = Field(
        30,
        description="Inactivity after which the next event starts a new session (PostHog's default). "
        "Projects can override it in their analytics settings.",
    )
    analytics_raw_retention_days: int = Field(
        395,
        description="Default days raw events are kept before the purge job deletes them (13 months, so a "
        "year-over-year comparison still works). Rollups outlive raw events. Per-project override.",
    )
    analytics_rollup_lag_seconds: float = Field(
        10.0,
        description="On PostgreSQL, the rollup job only folds in events received at least this long ago: "
        "ids from concurrent transactions can commit out of order, and a short lag lets them land first. "
        "SQLite commits in id order and ignores it.",
    )
    analytics_max_future_seconds: int = Field(
        300,
        description="An event whose skew-corrected time is further than this in the future is stamped "
        "with the receive time instead, so one broken clock cannot put events in next week.",
    )

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
            raise ConfigError(
                "SHIPYARD_SECRET_KEY is required when SHIPYARD_MODE=production: set it to a long random "
                "value (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`) and keep it"
            )
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
            raise ConfigError(
                "SHIPYARD_SECRET_KEY is required when SHIPYARD_MODE=production: set it to a long random "
                "value (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`) and keep it"
            )
        if self.public_url.startswith("http://127.0.0.1"):
            raise ConfigError(
                "SHIPYARD_PUBLIC_URL must be set when SHIPYARD_MODE=production: the https:// address "
                "apps and browsers reach this server at"
            )


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
