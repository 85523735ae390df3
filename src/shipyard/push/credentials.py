"""Provider credentials per project, encrypted at rest with ``ctx.box``; the API only
ever shows their non-secret metadata. Credential errors pause the provider for the
project until new credentials are stored."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.context import Context
from shipyard.core.db import upsert, utcnow
from shipyard.core.errors import BadRequest, NotFound
from shipyard.push.models import credentials
from shipyard.push.providers import ProviderCredentials, apns, fcm


def split_secret(provider: str, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(secret part, displayable metadata) of a credentials body; validates it."""
    if provider == "expo":
        return {"access_token": body.get("access_token")}, {"access_token_set": bool(body.get("access_token"))}
    if provider == "fcm":
        account = body["service_account"]
        try:
            fcm.check_service_account(account)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        meta = {
            "project_id": account["project_id"],
            "client_email": account["client_email"],
            "experience_id": body.get("experience_id"),
        }
        return {"service_account": account}, meta
    if provider == "apns":
        try:
            apns.check_key(body["key_p8"])
        except ValueError as exc:
            raise BadRequest(f"key_p8: {exc}") from None
        return {"key_p8": body["key_p8"]}, {k: body[k] for k in ("key_id", "team_id", "bundle_id")}
    raise BadRequest("provider must be expo, fcm or apns")


async def put(
    conn: AsyncConnection, ctx: Context, project_id: int, provider: str, body: dict[str, Any]
) -> dict[str, Any]:
    secret, meta = split_secret(provider, body)
    values = {
        "project_id": project_id,
        "provider": provider,
        "secret": ctx.box.encrypt(orjson.dumps(secret).decode()),
        "meta": meta,
        "paused_reason": None,
        "paused_at": None,
        "updated_at": utcnow(),
    }
    changes = {k: v for k, v in values.items() if k not in ("project_id", "provider")}
    await conn.execute(upsert(conn, credentials, values, conflict_columns=["project_id", "provider"], update=changes))
    return view({**values})


def view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "provider": row["provider"],
        "configured": row.get("secret") is not None,
        "meta": row.get("meta") or {},
        "paused": row.get("paused_reason") is not None,
        "paused_reason": row.get("paused_reason"),
        "updated_at": row.get("updated_at"),
    }


async def list_views(conn: AsyncConnection, project_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(select(credentials).where(credentials.c.project_id == project_id))
    return [view(dict(r._mapping)) for r in rows]


async def remove(conn: AsyncConnection, project_id: int, provider: str) -> None:
    result = await conn.execute(
        delete(credentials).where(credentials.c.project_id == project_id, credentials.c.provider == provider)
    )
    if not result.rowcount:
        raise NotFound(f"{provider} credentials")


async def load(conn: AsyncConnection, ctx: Context, project_id: int, provider: str) -> ProviderCredentials | None:
    row = (
        await conn.execute(
            select(credentials).where(credentials.c.project_id == project_id, credentials.c.provider == provider)
        )
    ).first()
    if row is None:
        return ProviderCredentials(provider) if provider == "expo" else None
    secret = orjson.loads(ctx.box.decrypt(row.secret)) if row.secret else {}
    return ProviderCredentials(provider, secret, dict(row.meta or {}), row.paused_reason)


async def pause(conn: AsyncConnection, project_id: int, provider: str, reason: str) -> None:
    now = utcnow()
    await conn.execute(
        upsert(
            conn,
            credentials,
            {
                "project_id": project_id,
                "provider": provider,
                "secret": None,
                "meta": {},
                "paused_reason": reason[:500],
                "paused_at": now,
                "updated_at": now,
            },
            conflict_columns=["project_id", "provider"],
            update={"paused_reason": reason[:500], "paused_at": now},
        )
    )


async def resume(conn: AsyncConnection, project_id: int, provider: str) -> bool:
    result = await conn.execute(
        update(credentials)
        .where(credentials.c.project_id == project_id, credentials.c.provider == provider)
        .values(paused_reason=None, paused_at=None)
    )
    return bool(result.rowcount)
