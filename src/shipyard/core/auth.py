"""Users, roles, API keys and dashboard sessions (domain logic, no HTTP)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.crypto import sha256_hex
from shipyard.core.db import utcnow
from shipyard.core.errors import BadRequest, Conflict, NotFound
from shipyard.core.models import api_keys, login_sessions, memberships, projects, users

_hasher = PasswordHasher()


class Role(IntEnum):
    """Per-project roles, ordered by power so ``role >= Role.admin`` reads naturally."""

    viewer = 10
    developer = 20
    admin = 30
    owner = 40

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name]
        except KeyError:
            raise BadRequest(f"unknown role {name!r}; expected one of viewer, developer, admin, owner") from None


@dataclass(frozen=True)
class Principal:
    """Who is calling an admin route, and with what rights on the project in the path."""

    kind: str  # user | key
    id: str  # user id or key id
    label: str  # email or key name, for the audit trail
    role: Role
    project_id: int | None
    scopes: tuple[str, ...] = ()
    is_instance_admin: bool = False

    def allows_scope(self, scope: str | None) -> bool:
        return scope is None or not self.scopes or scope in self.scopes or scope.split(":")[0] in self.scopes


# --- passwords -------------------------------------------------------------------------


def hash_password(password: str) -> str:
    if len(password) < 12:
        raise BadRequest("passwords must have at least 12 characters")
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, InvalidHashError):
        return False


def generate_password() -> str:
    return secrets.token_urlsafe(18)


# --- users -----------------------------------------------------------------------------


async def create_user(conn: AsyncConnection, email: str, password: str, *, instance_admin: bool = False) -> int:
    email = email.strip().lower()
    if "@" not in email:
        raise BadRequest("email must contain @")
    if (await conn.execute(select(users.c.id).where(users.c.email == email))).first():
        raise Conflict(f"a user with email {email} exists")
    result = await conn.execute(
        users.insert()
        .values(
            email=email,
            password_hash=hash_password(password),
            is_instance_admin=instance_admin,
            failed_logins=0,
            created_at=utcnow(),
        )
        .returning(users.c.id)
    )
    return int(result.scalar_one())


async def get_user_by_email(conn: AsyncConnection, email: str) -> Any:
    return (await conn.execute(select(users).where(users.c.email == email.strip().lower()))).first()


async def set_role(conn: AsyncConnection, user_id: int, project_id: int, role: Role) -> None:
    existing = (
        await conn.execute(
            select(memberships.c.role).where(memberships.c.user_id == user_id, memberships.c.project_id == project_id)
        )
    ).first()
    if existing:
        await conn.execute(
            update(memberships)
            .where(memberships.c.user_id == user_id, memberships.c.project_id == project_id)
            .values(role=role.name)
        )
    else:
        await conn.execute(
            memberships.insert().values(user_id=user_id, project_id=project_id, role=role.name, created_at=utcnow())
        )


async def remove_member(conn: AsyncConnection, user_id: int, project_id: int) -> bool:
    result = await conn.execute(
        memberships.delete().where(memberships.c.user_id == user_id, memberships.c.project_id == project_id)
    )
    return bool(result.rowcount)


async def role_of(conn: AsyncConnection, user_id: int, project_id: int) -> Role | None:
    role = (
        await conn.execute(
            select(memberships.c.role).where(memberships.c.user_id == user_id, memberships.c.project_id == project_id)
        )
    ).scalar()
    return Role[role] if role else None


async def projects_of(
    conn: AsyncConnection, user_id: int, *, after_id: int | None = None, limit: int | None = None
) -> list[Any]:
    """Projects a user belongs to (every project for instance admins), by id."""
    user = (await conn.execute(select(users.c.is_instance_admin).where(users.c.id == user_id))).scalar()
    query = select(projects.c.id, projects.c.slug, projects.c.name, memberships.c.role).select_from(
        projects.outerjoin(
            memberships, (memberships.c.project_id == projects.c.id) & (memberships.c.user_id == user_id)
        )
    )
    if not user:
        query = query.where(memberships.c.user_id == user_id)
    if after_id is not None:
        query = query.where(projects.c.id > after_id)
    query = query.order_by(projects.c.id)
    if limit is not None:
        query = query.limit(limit)
    return list((await conn.execute(query)).all())


# --- API keys ----------------------------------------------------------------------------

PUBLIC_PREFIX = "pk_"
SECRET_PREFIX = "sk_"


async def create_public_key(conn: AsyncConnection, project_id: int, name: str = "default") -> str:
    # Hex only: Sentry DSN parsers accept [0-9a-zA-Z_] in the key part.
    value = PUBLIC_PREFIX + secrets.token_hex(16)
    await conn.execute(
        api_keys.insert().values(
            project_id=project_id,
            kind="public",
            name=name,
            public_value=value,
            display_prefix=value[:10],
            role="viewer",
            scopes=[],
            created_at=utcnow(),
        )
    )
    return value


async def create_secret_key(
    conn: AsyncConnection, project_id: int, name: str, *, role: Role = Role.admin, scopes: list[str] | None = None
) -> tuple[int, str]:
    """Create a secret key; returns (id, key). The key itself is never stored."""
    if role == Role.owner:
        raise BadRequest("a key cannot have the owner role; use admin or lower")
    value = SECRET_PREFIX + secrets.token_urlsafe(32).replace("-", "x").replace("_", "y")
    result = await conn.execute(
        api_keys.insert()
        .values(
            project_id=project_id,
            kind="secret",
            name=name,
            secret_hash=sha256_hex(value),
            display_prefix=value[:10],
            role=role.name,
            scopes=scopes or [],
            created_at=utcnow(),
        )
        .returning(api_keys.c.id)
    )
    return int(result.scalar_one()), value


async def rotate_secret_key(conn: AsyncConnection, project_id: int, key_id: int, overlap: timedelta) -> tuple[int, str]:
    """Issue a replacement key; the old one keeps working for ``overlap``, then expires."""
    old = (
        await conn.execute(
            select(api_keys).where(
                api_keys.c.id == key_id, api_keys.c.project_id == project_id, api_keys.c.kind == "secret"
            )
        )
    ).first()
    if old is None or old.revoked_at is not None:
        raise NotFound("secret key")
    new_id, value = await create_secret_key(conn, project_id, old.name, role=Role[old.role], scopes=list(old.scopes))
    expires = utcnow() + overlap
    if old.expires_at is None or old.expires_at > expires:
        await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(expires_at=expires))
    return new_id, value


async def rotate_public_key(conn: AsyncConnection, project_id: int, overlap: timedelta) -> str:
    """New public key (ship it in the next app build); old ones expire after ``overlap``."""
    expires = utcnow() + overlap
    await conn.execute(
        update(api_keys)
        .where(
            api_keys.c.project_id == project_id,
            api_keys.c.kind == "public",
            api_keys.c.revoked_at.is_(None),
            api_keys.c.expires_at.is_(None),
        )
        .values(expires_at=expires)
    )
    return await create_public_key(conn, project_id)


async def revoke_key(conn: AsyncConnection, project_id: int, key_id: int) -> bool:
    result = await conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.project_id == project_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(result.rowcount)


async def list_keys(
    conn: AsyncConnection, project_id: int, *, after_id: int | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    query = select(api_keys).where(api_keys.c.project_id == project_id)
    if after_id is not None:
        query = query.where(api_keys.c.id > after_id)
    query = query.order_by(api_keys.c.id)
    if limit is not None:
        query = query.limit(limit)
    rows = (await conn.execute(query)).all()
    return [
        {
            "id": r.id,
            "kind": r.kind,
            "name": r.name,
            "prefix": r.display_prefix,
            "role": r.role,
            "scopes": list(r.scopes),
            "created_at": r.created_at,
            "expires_at": r.expires_at,
            "revoked_at": r.revoked_at,
            "last_used_at": r.last_used_at,
            # Public keys are not secret; secret keys are shown only at creation.
            "public_key": r.public_value,
        }
        for r in rows
    ]


def _key_usable(row: Any) -> bool:
    now = utcnow()
    return row.revoked_at is None and (row.expires_at is None or row.expires_at > now)


class KeyCache:
    """Resolves keys without a database round trip on every request.

    Entries live ``ttl`` seconds, so a revoked key stops working within that time on
    every process; ``last_used_at`` is written at most once a minute per key.
    """

    def __init__(self, ttl: float = 10.0) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, Any]] = {}
        self._touched: dict[int, float] = {}

    def clear(self) -> None:
        self._entries.clear()

    def cached(self, kind: str, raw: str) -> Any:
        """The usable key row when it is cached and fresh, else None (ask ``lookup``)."""
        hit = self._entries.get(f"{kind}:{raw}")
        if hit and hit[0] > time.monotonic() and hit[1] is not None and _key_usable(hit[1]):
            return hit[1]
        return None

    async def lookup(self, conn: AsyncConnection, kind: str, raw: str) -> Any:
        now = time.monotonic()
        cache_key = f"{kind}:{raw}"
        hit = self._entries.get(cache_key)
        if hit and hit[0] > now:
            row = hit[1]
        else:
            column = api_keys.c.public_value if kind == "public" else api_keys.c.secret_hash
            needle = raw if kind == "public" else sha256_hex(raw)
            row = (await conn.execute(select(api_keys).where(column == needle, api_keys.c.kind == kind))).first()
            self._entries[cache_key] = (now + self.ttl, row)
            if len(self._entries) > 10_000:
                self._entries.clear()
        if row is None or not _key_usable(row):
            return None
        return row

    def should_touch(self, key_id: int) -> bool:
        now = time.monotonic()
        if now - self._touched.get(key_id, 0.0) < 60:
            return False
        self._touched[key_id] = now
        return True


async def touch_key(conn: AsyncConnection, key_id: int) -> None:
    await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=utcnow()))


# --- dashboard sessions ---------------------------------------------------------------


@dataclass(frozen=True)
class LoginResult:
    user: Any = None
    error: str | None = None


async def check_login(
    conn: AsyncConnection, email: str, password: str, *, max_failures: int, lockout: timedelta
) -> LoginResult:
    """Verify credentials with lockout after repeated failures.

    Returns the outcome rather than raising, so the caller's transaction commits the
    failure count (an exception would roll it back and lockout would never trigger).
    """
    user = await get_user_by_email(conn, email)
    if user is None:
        verify_password(_DUMMY_HASH, password)  # same work either way: no user enumeration by timing
        return LoginResult(error="wrong email or password")
    now = utcnow()
    if user.locked_until is not None and user.locked_until > now:
        return LoginResult(error="account locked after repeated failed logins; try again later")
    if not verify_password(user.password_hash, password):
        failures = user.failed_logins + 1
        values: dict[str, Any] = {"failed_logins": failures}
        if failures >= max_failures:
            values.update(locked_until=now + lockout, failed_logins=0)
        await conn.execute(update(users).where(users.c.id == user.id).values(**values))
        return LoginResult(error="wrong email or password")
    await conn.execute(
        update(users).where(users.c.id == user.id).values(failed_logins=0, locked_until=None, last_login_at=now)
    )
    return LoginResult(user=user)


_DUMMY_HASH = _hasher.hash("not-a-real-password-just-timing")


async def create_session(
    conn: AsyncConnection, user_id: int, ttl: timedelta, *, mfa_passed: bool, ip: str | None, user_agent: str | None
) -> tuple[str, str]:
    """Returns (session token for the cookie, CSRF token). Only the token's hash is stored."""
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24)
    now = utcnow()
    await conn.execute(
        login_sessions.insert().values(
            id_hash=sha256_hex(token),
            user_id=user_id,
            csrf_token=csrf,
            mfa_passed=mfa_passed,
            created_at=now,
            expires_at=now + ttl,
            ip=ip,
            user_agent=(user_agent or "")[:400],
        )
    )
    return token, csrf


async def session_user(conn: AsyncConnection, token: str) -> Any:
    row = (
        await conn.execute(
            select(login_sessions, users.c.email, users.c.is_instance_admin)
            .join(users, users.c.id == login_sessions.c.user_id)
            .where(login_sessions.c.id_hash == sha256_hex(token))
        )
    ).first()
    if row is None or row.expires_at <= utcnow():
        return None
    return row


async def end_session(conn: AsyncConnection, token: str) -> None:
    await conn.execute(login_sessions.delete().where(login_sessions.c.id_hash == sha256_hex(token)))
