"""Request and response bodies of the push API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- devices and preferences (app side) -------------------------------------------------------


class DeviceRegister(Strict):
    token: str = Field(min_length=1, max_length=512, description="Expo push token or native FCM/APNs token.")
    platform: Literal["ios", "android", "web"]
    provider: Literal["expo", "fcm", "apns"] | None = Field(None, description="Inferred from the token when omitted.")
    app_version: str | None = Field(None, max_length=64)
    locale: str | None = Field(None, max_length=35)
    timezone: str | None = Field(None, max_length=64, description="IANA name, e.g. Europe/Berlin.")
    permission: Literal["granted", "denied", "provisional", "not_asked"] = "granted"
    environment: Literal["production", "development"] = "production"
    user_id: str | None = Field(
        None, max_length=200, description="Bind to this user (must match the user token when the project requires one)."
    )
    topics: list[str] = Field(default_factory=list, max_length=50)


class TopicBody(Strict):
    token: str = Field(min_length=1, max_length=512)
    topic: str = Field(min_length=1, max_length=100)


class QuietHours(Strict):
    start: str = Field(description="HH:MM local")
    end: str = Field(description="HH:MM local")
    timezone: str | None = Field(None, max_length=64, description="Default: the user's or device's timezone.")


class PreferencesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    categories: dict[str, bool] | None = None
    quiet_hours: QuietHours | None = None
    daily_cap: int | None = Field(None, ge=0, le=10000)
    hourly_cap: int | None = Field(
        None, ge=1, le=10000, description="At most this many notifications in any 60 minutes; more wait (deferred)."
    )
    category_caps: dict[str, int | None] | None = Field(
        None, description="Per category: at most N per local day for this user (null removes the cap)."
    )
    timezone: str | None = Field(None, max_length=64)


class Engagement(Strict):
    message_id: str = Field(min_length=1, max_length=36, description="`data._sid` of the notification.")
    event: Literal["delivered", "opened"]


# --- admin: configuration ---------------------------------------------------------------------


class CategoryBody(Strict):
    description: str = Field("", max_length=500)
    critical: bool = Field(False, description="Bypasses quiet hours and daily caps (never a user's opt-out).")
    default_enabled: bool = True
    daily_cap: int | None = Field(None, ge=0, le=10000, description="Per user per local day for this category.")
    hourly_cap: int | None = Field(
        None, ge=1, le=10000, description="Per user in any 60 minutes for this category; more wait (deferred)."
    )
    digest_window_seconds: int | None = Field(
        None, ge=10, le=7 * 86400, description="Collapse this category's notifications within the window into one."
    )
    digest_title: str | None = Field(None, max_length=200, description="Title of a digest; `{count}` is filled in.")
    digest_body: str | None = Field(None, max_length=500, description="e.g. `{count} new comments on your grow log`")
    channel_id: str | None = Field(None, max_length=100, description="Android notification channel.")


class TemplateText(Strict):
    title: str | None = Field(None, max_length=500)
    body: str | None = Field(None, max_length=4000)


class TemplateBody(Strict):
    texts: dict[str, TemplateText] = Field(description="Per locale: {title, body} with {variable} placeholders.")
    default_locale: str | None = Field(None, max_length=35)
    category: str | None = Field(None, max_length=64)
    data: dict[str, Any] = Field(default_factory=dict)


class UserBody(Strict):
    properties: dict[str, Any] | None = Field(None, description="Segment properties (replaces the stored ones).")
    timezone: str | None = Field(None, max_length=64)
    locale: str | None = Field(None, max_length=35)


class AuthConfigBody(Strict):
    jwt_secret: str | None = Field(None, min_length=16, max_length=500, description="HS256 secret (Supabase).")
    jwks_url: str | None = Field(None, max_length=500)
    audience: str | None = Field(None, max_length=200)
    issuer: str | None = Field(None, max_length=500)


class ExpoCredentials(Strict):
    access_token: str | None = Field(None, max_length=500, description="Expo access token (enhanced push security).")


class FcmCredentials(Strict):
    service_account: dict[str, Any] = Field(description="The Firebase service-account JSON.")
    experience_id: str | None = Field(
        None,
        max_length=200,
        description="`@owner/slug` of the Expo project: sent as experienceId/scopeKey, which "
        "expo-notifications expects in direct FCM data payloads.",
    )


class ApnsCredentials(Strict):
    key_p8: str = Field(min_length=50, max_length=5000, description="Contents of the .p8 signing key.")
    key_id: str = Field(min_length=10, max_length=10)
    team_id: str = Field(min_length=10, max_length=10)
    bundle_id: str = Field(min_length=1, max_length=200, description="apns-topic")


# --- sending ---------------------------------------------------------------------------------


class NotificationPayload(Strict):
    """The seed's NotificationPayload plus the provider options apps commonly need."""

    title: str | None = Field(None, max_length=500)
    body: str | None = Field(None, max_length=4000)
    data: dict[str, Any] = Field(default_factory=dict)
    badge: int | None = Field(None, ge=0, le=99999)
    sound: str | None = Field(None, max_length=200)
    category: str | None = Field(None, max_length=64, description="A category the project defined.")
    deep_link: str | None = Field(None, max_length=2000)
    image: str | None = Field(None, max_length=2000, description="richContent.image / FCM image / APNs mutable.")
    subtitle: str | None = Field(None, max_length=500)
    ttl: int | None = Field(None, ge=0, le=2419200)
    priority: Literal["default", "normal", "high"] = "default"
    channel_id: str | None = Field(None, max_length=100)
    collapse_id: str | None = Field(None, max_length=64)


class Target(Strict):
    user_ids: list[str] = Field(default_factory=list, max_length=10000)
    device_ids: list[int] = Field(default_factory=list, max_length=10000)
    tokens: list[str] = Field(default_factory=list, max_length=10000)
    topics: list[str] = Field(default_factory=list, max_length=100)
    segment: dict[str, Any] | None = Field(
        None, description="Users whose properties match: {prop: value | [values] | {gte, lte, gt, lt, ne}}."
    )
    all: bool = Field(False, description="Every active device of the project.")


class RecurringPattern(Strict):
    frequency: Literal["daily", "weekly", "monthly"]
    time: str = Field(description="HH:MM")
    days_of_week: list[int] = Field(default_factory=list, description="0 = Monday … 6 = Sunday")
    day_of_month: int = Field(1, ge=1, le=31)
    end_date: date | None = None


class Schedule(Strict):
    """The seed's NotificationSchedule."""

    trigger: Literal["immediate", "scheduled", "recurring"] = "immediate"
    scheduled_time: datetime | None = Field(
        None,
        description="An instant (with offset), or a wall-clock time without offset read in `timezone` "
        "(`user`: each user's own timezone).",
    )
    recurring_pattern: RecurringPattern | None = None
    timezone: str | None = Field(None, max_length=64, description="IANA name, or `user` for each user's own.")


class SendRequest(Strict):
    to: Target
    notification: NotificationPayload | None = None
    template: str | None = Field(None, max_length=100)
    variables: dict[str, Any] = Field(default_factory=dict)
    schedule: Schedule = Field(default_factory=Schedule)
    idempotency_key: str | None = Field(None, max_length=255)
    campaign: str | None = Field(None, max_length=100)


class RuleBody(Strict):
    event: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-:]+$")
    template: str = Field(min_length=1, max_length=100)
    recipient_field: str = Field("user_id", max_length=100, description="Event property naming the user to notify.")
    category: str | None = Field(None, max_length=64)
    delay_seconds: int = Field(0, ge=0, le=30 * 86400)
    digest_window_seconds: int | None = Field(None, ge=10, le=7 * 86400)
    deep_link_route: str | None = Field(None, max_length=100)
    enabled: bool = True


class EventBody(Strict):
    event: str = Field(min_length=1, max_length=100)
    properties: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(None, max_length=255)


class LinkRouteBody(Strict):
    template: str = Field(min_length=3, max_length=500, description="e.g. canabro://plants/{plantId}")


class LinkGenerate(Strict):
    route: str = Field(max_length=100)
    params: dict[str, str | int] = Field(default_factory=dict)
    campaign: str | None = Field(None, max_length=100)
    source: Literal["notification", "url", "qr_code", "share"] = "notification"
    ttl_hours: int | None = Field(None, ge=1, le=24 * 365)


class LinkValidate(Strict):
    url: str = Field(max_length=4000)


class LinkEngagement(Strict):
    url: str = Field(max_length=4000)
    outcome: Literal["success", "failure", "ignored"]
    source: Literal["notification", "url", "qr_code", "share"] = "notification"
    user_id: str | None = Field(None, max_length=200)
