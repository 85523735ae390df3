"""Expo Push API: ``POST /--/api/v2/push/send`` (≤100 messages, tickets back in order)
and ``POST /--/api/v2/push/getReceipts`` (≤1000 ids), gzip above 1 KiB, optional access
token, at most ``push_expo_concurrency`` requests in flight per process."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import httpx
import orjson

from shipyard.core.context import Context
from shipyard.core.http import CircuitOpen, outbound, retry_after_seconds
from shipyard.push.providers import Outgoing, ProviderCredentials, Result

SEND_PATH = "/--/api/v2/push/send"
RECEIPTS_PATH = "/--/api/v2/push/getReceipts"
MAX_RECEIPT_IDS = 1000


class ReceiptsUnavailable(Exception):  # noqa: N818
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def destination(project_id: int) -> str:
    return f"push:expo:{project_id}"


def _semaphore(ctx: Context) -> asyncio.Semaphore:
    sem = ctx.extras.get("push_expo_semaphore")
    if sem is None:
        sem = ctx.extras["push_expo_semaphore"] = asyncio.Semaphore(max(1, ctx.settings.push_expo_concurrency))
    return sem


def to_expo(item: Outgoing) -> dict[str, Any]:
    """Our payload in Expo's message fields."""
    p = item.payload
    msg: dict[str, Any] = {"to": item.token, "data": p.get("data") or {}}
    for ours, theirs in (
        ("title", "title"),
        ("body", "body"),
        ("subtitle", "subtitle"),
        ("sound", "sound"),
        ("badge", "badge"),
        ("ttl", "ttl"),
        ("channel_id", "channelId"),
        ("collapse_id", "collapseId"),
        ("ios_category", "categoryId"),
    ):
        if p.get(ours) is not None:
            msg[theirs] = p[ours]
    if p.get("priority") and p["priority"] != "default":
        msg["priority"] = p["priority"]
    if p.get("image"):
        msg["richContent"] = {"image": p["image"]}
        msg["mutableContent"] = True
    return msg


def _headers(creds: ProviderCredentials, compressed: bool) -> dict[str, str]:
    headers = {"accept": "application/json", "accept-encoding": "gzip, deflate", "content-type": "application/json"}
    token = creds.secret.get("access_token")
    if token:
        headers["authorization"] = f"Bearer {token}"
    if compressed:
        headers["content-encoding"] = "gzip"
    return headers


def _body(payload: Any) -> tuple[bytes, bool]:
    raw = orjson.dumps(payload)
    if len(raw) > 1024:  # as the Node SDK does
        return gzip.compress(raw, compresslevel=5), True
    return raw, False


def _request_error(response: httpx.Response) -> tuple[str, str]:
    try:
        errors = response.json().get("errors") or []
        first = errors[0] if errors else {}
        return str(first.get("code") or response.status_code), str(first.get("message") or response.text[:300])
    except Exception:
        return str(response.status_code), response.text[:300]


def _classify_request_error(items: list[Outgoing], response: httpx.Response) -> list[Result]:
    code, message = _request_error(response)
    status = response.status_code
    reason = f"{code}: {message}"
    if status == 429 or code == "TOO_MANY_REQUESTS" or status >= 500:
        wait = retry_after_seconds(response)
        return [Result(i.id, "retry", reason, retry_after=wait) for i in items]
    if status in (401, 403) or code in ("UNAUTHORIZED", "PUSH_TOO_MANY_EXPERIENCE_IDS"):
        return [Result(i.id, "credentials", reason) for i in items]
    return [Result(i.id, "failed", reason) for i in items]


def classify_error(detail: str | None, message: str) -> str:
    """Map an Expo ticket or receipt error to one of our outcomes."""
    if detail == "DeviceNotRegistered":
        return "dead"
    if detail == "MessageRateExceeded":
        return "retry"
    if detail in ("InvalidCredentials", "MismatchSenderId"):
        return "credentials"
    return "failed"  # MessageTooBig, DeveloperError, ExpoError, ProviderError, unknown


async def send(ctx: Context, project_id: int, creds: ProviderCredentials, items: list[Outgoing]) -> list[Result]:
    url = ctx.settings.push_expo_url.rstrip("/") + SEND_PATH
    content, compressed = _body([to_expo(i) for i in items])
    try:
        async with _semaphore(ctx):
            response = await outbound(ctx).request(
                "POST",
                url,
                destination=destination(project_id),
                retries=0,
                content=content,
                headers=_headers(creds, compressed),
            )
    except CircuitOpen as exc:
        return [Result(i.id, "retry", str(exc), retry_after=exc.retry_after, count_attempt=False) for i in items]
    except httpx.HTTPError as exc:
        return [Result(i.id, "retry", f"network error: {type(exc).__name__}: {exc}") for i in items]
    if response.status_code != 200:
        return _classify_request_error(items, response)
    try:
        tickets = response.json()["data"]
    except Exception:
        return [Result(i.id, "retry", "Expo answered 200 without tickets") for i in items]
    if isinstance(tickets, dict):  # a single message is answered with a single ticket
        tickets = [tickets]
    if len(tickets) != len(items):
        return [Result(i.id, "retry", f"Expo answered {len(tickets)} tickets for {len(items)}") for i in items]
    results = []
    for item, ticket in zip(items, tickets, strict=True):
        if ticket.get("status") == "ok":
            results.append(Result(item.id, "sent", ticket_id=str(ticket.get("id"))))
            continue
        detail = (ticket.get("details") or {}).get("error")
        reason = f"{detail or 'error'}: {ticket.get('message', '')}"
        results.append(Result(item.id, classify_error(detail, reason), reason))
    return results


async def receipts(
    ctx: Context, project_id: int, creds: ProviderCredentials, ticket_ids: list[str]
) -> dict[str, dict[str, Any]]:
    """Receipts by ticket id (ids without a receipt yet are simply absent)."""
    url = ctx.settings.push_expo_url.rstrip("/") + RECEIPTS_PATH
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ticket_ids), MAX_RECEIPT_IDS):
        chunk = ticket_ids[start : start + MAX_RECEIPT_IDS]
        content, compressed = _body({"ids": chunk})
        try:
            async with _semaphore(ctx):
                response = await outbound(ctx).request(
                    "POST",
                    url,
                    destination=destination(project_id),
                    retries=0,
                    content=content,
                    headers=_headers(creds, compressed),
                )
        except CircuitOpen as exc:
            raise ReceiptsUnavailable(str(exc), exc.retry_after) from None
        except httpx.HTTPError as exc:
            raise ReceiptsUnavailable(f"network error: {exc}") from None
        if response.status_code != 200:
            code, message = _request_error(response)
            raise ReceiptsUnavailable(f"{code}: {message}", retry_after_seconds(response))
        data = response.json().get("data") or {}
        found.update({str(k): v for k, v in data.items()})
    return found
