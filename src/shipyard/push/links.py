"""Deep links (seed ``DeepLinkHandler``): per-project route templates such as
``canabro://plants/{plantId}``, links generated from a route and parameters with tracking
parameters, an expiry and an HMAC signature, validation for the app, and engagement
(success, failure, ignored) recorded per campaign.

A generated link is the route's URL plus ``sy_l`` (link id), ``sy_c`` (campaign), ``sy_s``
(source), ``sy_exp`` (expiry, unix seconds) and ``sy_sig`` (HMAC-SHA256 over everything
before it, keyed by the server's secret and the project).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.context import Context
from shipyard.core.crypto import stored_server_key
from shipyard.core.db import upsert, utcnow
from shipyard.core.errors import BadRequest, NotFound
from shipyard.push.models import link_engagements, link_routes

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
TRACKING = ("sy_l", "sy_c", "sy_s", "sy_exp", "sy_sig")


def check_template(template: str) -> list[str]:
    """A route template is an absolute URL (custom scheme or https) with ``{param}`` holes."""
    parts = urlsplit(template.replace("{", "x").replace("}", "x"))
    if not parts.scheme or not re.match(r"^[a-z][a-z0-9+.\-]*$", parts.scheme):
        raise BadRequest("a route template is an absolute URL such as canabro://plants/{plantId}")
    if "?" in template or "#" in template:
        raise BadRequest("a route template has no query or fragment; tracking parameters are added to it")
    names = _PARAM.findall(template)
    if len(names) != len(set(names)):
        raise BadRequest("a route template names each parameter once")
    if re.search(r"[{}]", _PARAM.sub("", template)):
        raise BadRequest("placeholders look like {name} (letters, digits, underscore)")
    return names


def _pattern(template: str) -> re.Pattern[str]:
    out, pos = "", 0
    for m in _PARAM.finditer(template):
        out += re.escape(template[pos : m.start()]) + f"(?P<{m.group(1)}>[^/?#]+)"
        pos = m.end()
    return re.compile("^" + out + re.escape(template[pos:]) + "$")


async def put_route(conn: AsyncConnection, project_id: int, name: str, template: str) -> dict[str, Any]:
    if not _NAME.match(name):
        raise BadRequest("route names use letters, digits, '_', '-' and '.'")
    params = check_template(template)
    now = utcnow()
    await conn.execute(
        upsert(
            conn,
            link_routes,
            {"project_id": project_id, "name": name, "template": template, "created_at": now, "updated_at": now},
            conflict_columns=["project_id", "name"],
            update={"template": template, "updated_at": now},
        )
    )
    return {"name": name, "template": template, "params": params}


async def list_routes(conn: AsyncConnection, project_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(link_routes).where(link_routes.c.project_id == project_id).order_by(link_routes.c.name)
    )
    return [{"name": r.name, "template": r.template, "params": _PARAM.findall(r.template)} for r in rows]


async def delete_route(conn: AsyncConnection, project_id: int, name: str) -> None:
    result = await conn.execute(
        delete(link_routes).where(link_routes.c.project_id == project_id, link_routes.c.name == name)
    )
    if not result.rowcount:
        raise NotFound("link route")


async def _sign(conn: AsyncConnection, ctx: Context, project_id: int, unsigned: str) -> str:
    # A stored key rather than one derived from the server secret: links already sent in
    # notifications keep validating after the secret is rotated.
    key = await stored_server_key(conn, ctx, "push-links")
    return hmac.new(key, f"{project_id}:{unsigned}".encode(), hashlib.sha256).hexdigest()[:32]


async def generate(
    conn: AsyncConnection,
    ctx: Context,
    project_id: int,
    route: str,
    params: dict[str, Any],
    *,
    campaign: str | None = None,
    source: str = "notification",
    ttl_hours: int | None = None,
) -> dict[str, Any]:
    row = (
        await conn.execute(
            select(link_routes.c.template).where(link_routes.c.project_id == project_id, link_routes.c.name == route)
        )
    ).first()
    if row is None:
        raise BadRequest(f"unknown deep-link route {route!r}; define it first (PUT …/push/links/routes/{route})")
    names = _PARAM.findall(row.template)
    missing = [n for n in names if params.get(n) in (None, "")]
    if missing:
        raise BadRequest(f"route {route!r} needs parameters: {', '.join(missing)}")
    base = _PARAM.sub(lambda m: quote(str(params[m.group(1)]), safe=""), row.template)
    expires = utcnow() + timedelta(hours=ttl_hours or ctx.settings.push_link_ttl_hours)
    link_id = secrets.token_urlsafe(9)
    query = [("sy_l", link_id)]
    if campaign:
        query.append(("sy_c", campaign))
    query += [("sy_s", source), ("sy_exp", str(int(expires.timestamp())))]
    unsigned = f"{base}?{urlencode(query)}"
    url = f"{unsigned}&sy_sig={await _sign(conn, ctx, project_id, unsigned)}"
    return {"url": url, "link_id": link_id, "route": route, "campaign": campaign, "expires_at": expires}


async def validate(conn: AsyncConnection, ctx: Context, project_id: int, url: str) -> dict[str, Any]:
    """Whether ``url`` is authentic (signature), unexpired and points at a registered route."""
    result: dict[str, Any] = {"valid": False, "reason": None, "route": None, "params": {}, "campaign": None}
    base, _, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    fields = dict(pairs)
    result["link_id"] = fields.get("sy_l")
    result["campaign"] = fields.get("sy_c")
    result["source"] = fields.get("sy_s")
    sig = fields.get("sy_sig")
    if not sig or not query.endswith(f"&sy_sig={sig}"):
        result["reason"] = "the link is not signed"
        return result
    unsigned = url[: -len(f"&sy_sig={sig}")]
    if not hmac.compare_digest(sig, await _sign(conn, ctx, project_id, unsigned)):
        result["reason"] = "the signature does not match (tampered or from another project)"
        return result
    try:
        expires = datetime.fromtimestamp(int(fields.get("sy_exp", "")), tz=utcnow().tzinfo)
    except ValueError:
        result["reason"] = "the link has no valid expiry"
        return result
    result["expires_at"] = expires
    if expires <= utcnow():
        result["reason"] = "the link has expired"
        return result
    for r in await list_routes(conn, project_id):
        m = _pattern(r["template"]).match(base)
        if m:
            result.update(valid=True, route=r["name"], params=m.groupdict())
            return result
    result["reason"] = "the link points at no registered route"
    return result


async def record_engagement(
    conn: AsyncConnection,
    ctx: Context,
    project_id: int,
    url: str,
    outcome: str,
    source: str,
    user_id: str | None,
) -> dict[str, Any]:
    """The app reports what happened when it opened a link. Links that fail validation are
    recorded as failures (with the reason) whatever the app says."""
    checked = await validate(conn, ctx, project_id, url)
    recorded = outcome if checked["valid"] else "failure"
    await conn.execute(
        link_engagements.insert().values(
            project_id=project_id,
            link_id=(checked.get("link_id") or "")[:64],
            route=checked["route"],
            campaign=(checked.get("campaign") or None) and str(checked["campaign"])[:100],
            source=checked.get("source")
            if checked.get("source") in ("notification", "url", "qr_code", "share")
            else source,
            outcome=recorded,
            user_id=user_id,
            ts=utcnow(),
        )
    )
    return {"recorded": recorded, "valid": checked["valid"], "reason": checked["reason"], "route": checked["route"]}


async def engagement_stats(
    conn: AsyncConnection, project_id: int, since: datetime | None = None
) -> dict[str | None, dict[str, int]]:
    """Per campaign: how many link opens succeeded, failed or were ignored."""
    stmt = select(link_engagements.c.campaign, link_engagements.c.outcome, func.count()).where(
        link_engagements.c.project_id == project_id
    )
    if since is not None:
        stmt = stmt.where(link_engagements.c.ts >= since)
    out: dict[str | None, dict[str, int]] = {}
    for campaign, outcome, n in await conn.execute(
        stmt.group_by(link_engagements.c.campaign, link_engagements.c.outcome)
    ):
        out.setdefault(campaign, {"success": 0, "failure": 0, "ignored": 0})[outcome] = int(n)
    return out
