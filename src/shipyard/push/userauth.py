"""App-user tokens (Supabase Auth style JWTs) that prove who is binding a device or
changing preferences.

A project configures either an HS256 secret (Supabase's "JWT secret") or a JWKS URL
(asymmetric keys). When neither is configured, the app names the user id itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.context import Context
from shipyard.core.deps import Unauthorized
from shipyard.core.errors import ApiError
from shipyard.core.http import CircuitOpen, outbound
from shipyard.push.models import config

JWKS_TTL_SECONDS = 600
CONFIG_TTL_SECONDS = 5.0
_ASYMMETRIC = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


@dataclass(frozen=True)
class AuthConfig:
    jwt_secret: str | None
    jwks_url: str | None
    audience: str | None
    issuer: str | None

    @property
    def required(self) -> bool:
        return bool(self.jwt_secret or self.jwks_url)


async def load_config(conn: AsyncConnection, ctx: Context, project_id: int) -> AuthConfig:
    row = (await conn.execute(select(config).where(config.c.project_id == project_id))).first()
    if row is None:
        return AuthConfig(None, None, None, None)
    secret = ctx.box.decrypt(row.jwt_secret) if row.jwt_secret else None
    return AuthConfig(secret, row.jwks_url, row.jwt_audience, row.jwt_issuer)


async def cached_config(ctx: Context, project_id: int) -> AuthConfig:
    """:func:`load_config` kept for a few seconds: every device registration and preference
    change asks, and a read of its own costs a pool checkout and a query. A change made
    through this process applies at once (:func:`forget_config`); other processes see it
    within ``CONFIG_TTL_SECONDS``, as they do project settings."""
    cache: dict[int, tuple[float, AuthConfig]] = ctx.extras.setdefault("push_auth_config", {})
    now = time.monotonic()
    hit = cache.get(project_id)
    if hit is None or hit[0] < now:
        async with ctx.db.connect() as conn:
            hit = (now + CONFIG_TTL_SECONDS, await load_config(conn, ctx, project_id))
        if len(cache) > 10_000:
            cache.clear()
        cache[project_id] = hit
    return hit[1]


def forget_config(ctx: Context, project_id: int) -> None:
    ctx.extras.get("push_auth_config", {}).pop(project_id, None)


async def _jwks(ctx: Context, project_id: int, url: str, *, refresh: bool = False) -> jwt.PyJWKSet:
    cache: dict[str, tuple[float, jwt.PyJWKSet]] = ctx.extras.setdefault("push_jwks", {})
    hit = cache.get(url)
    if hit and hit[0] > time.monotonic() and not refresh:
        return hit[1]
    try:
        response = await outbound(ctx).request(
            "GET", url, destination=f"push:jwks:{project_id}", check_url=True, retries=1
        )
    except CircuitOpen:
        raise ApiError(503, "jwks_unavailable", "the project's JWKS endpoint is failing; retry shortly") from None
    if response.status_code != 200:
        raise ApiError(503, "jwks_unavailable", f"the project's JWKS endpoint answered {response.status_code}")
    keys = jwt.PyJWKSet.from_dict(response.json())
    cache[url] = (time.monotonic() + JWKS_TTL_SECONDS, keys)
    return keys


async def verify_user_token(ctx: Context, project_id: int, cfg: AuthConfig, token: str) -> str:
    """The user id (``sub``) of a valid token; raises 401 otherwise."""
    options: dict[str, Any] = {"require": ["sub", "exp"], "verify_aud": cfg.audience is not None}
    kwargs: dict[str, Any] = {"audience": cfg.audience, "issuer": cfg.issuer, "options": options, "leeway": 30}
    try:
        if cfg.jwt_secret:
            claims = jwt.decode(token, cfg.jwt_secret, algorithms=["HS256", "HS384", "HS512"], **kwargs)
        else:
            assert cfg.jwks_url
            header = jwt.get_unverified_header(token)
            keys = await _jwks(ctx, project_id, cfg.jwks_url)
            kid = header.get("kid")
            matching = [k for k in keys.keys if k.key_id == kid] if kid else list(keys.keys)
            if not matching and kid:  # keys rotated since we cached them
                keys = await _jwks(ctx, project_id, cfg.jwks_url, refresh=True)
                matching = [k for k in keys.keys if k.key_id == kid]
            if not matching:
                raise Unauthorized("user token signed by an unknown key")
            claims = jwt.decode(token, matching[0].key, algorithms=_ASYMMETRIC, **kwargs)
    except jwt.ExpiredSignatureError:
        raise Unauthorized("user token expired") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid user token: {exc}") from None
    subject = str(claims["sub"])
    if not subject or len(subject) > 200:
        raise Unauthorized("user token has an unusable sub claim")
    return subject


async def resolve_user(
    ctx: Context, project_id: int, authorization: str | None, claimed_user_id: str | None
) -> str | None:
    """Who the request acts for: the verified token's subject when the project requires
    tokens (a different claimed id is refused), else the claimed id."""
    cfg = await cached_config(ctx, project_id)
    token = None
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    if not cfg.required:
        return claimed_user_id
    if token is None:
        if claimed_user_id:
            raise Unauthorized("this project requires a user token (Authorization: Bearer <jwt>) to act for a user")
        return None
    subject = await verify_user_token(ctx, project_id, cfg, token)
    if claimed_user_id and claimed_user_id != subject:
        raise ApiError(403, "forbidden", "the user token belongs to another user")
    return subject
