"""Projects: numeric id (Sentry DSNs need one), slug, environments, keys."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core import auth
from shipyard.core.db import utcnow
from shipyard.core.errors import BadRequest, Conflict, NotFound
from shipyard.core.models import api_keys, environments, projects

DEFAULT_ENVIRONMENTS = ("development", "staging", "production")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class Project:
    id: int
    slug: str
    name: str
    settings: dict[str, Any]


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:63]
    return slug or "project"


def client_urls(public_base: str, project_id: int, public_key: str) -> dict[str, str]:
    """What an app embeds: DSN, Segment write key, OTA manifest URL, OFREP base."""
    parts = urlsplit(public_base)
    netloc_path = parts.netloc + parts.path.rstrip("/")
    return {
        "public_key": public_key,
        "dsn": f"{parts.scheme}://{public_key}@{netloc_path}/{project_id}",
        "write_key": public_key,
        "manifest_url": f"{public_base}/updates/{project_id}/manifest",
        "segment_api_host": f"{netloc_path}/v1",
    }


async def create_project(
    conn: AsyncConnection, name: str, *, slug: str | None = None, public_base: str
) -> dict[str, Any]:
    """Create a project with its environments, a public key and a first secret key."""
    name = name.strip()
    if not name:
        raise BadRequest("a project needs a name")
    slug = slug or slugify(name)
    if not _SLUG.match(slug) or slug.isdecimal():
        raise BadRequest("slug must be lower-case letters, digits and dashes, not only digits")
    if (await conn.execute(select(projects.c.id).where(projects.c.slug == slug))).first():
        raise Conflict(f"a project with slug {slug!r} exists")
    now = utcnow()
    project_id = (
        await conn.execute(
            projects.insert().values(slug=slug, name=name, settings={}, created_at=now).returning(projects.c.id)
        )
    ).scalar_one()
    await conn.execute(
        environments.insert(),
        [{"project_id": project_id, "name": env, "created_at": now} for env in DEFAULT_ENVIRONMENTS],
    )
    public_key = await auth.create_public_key(conn, project_id)
    _key_id, secret_key = await auth.create_secret_key(conn, project_id, "default")
    return {
        "id": project_id,
        "slug": slug,
        "name": name,
        "secret_key": secret_key,
        **client_urls(public_base, project_id, public_key),
    }


# Built once: every admin request looks its project up, and building the expression
# (column comparisons, coercions) cost more than SQLAlchemy's cached compilation of it.
_BY_SLUG = select(projects).where(projects.c.slug == bindparam("slug"))
_BY_SLUG_OR_ID = select(projects).where(or_(projects.c.slug == bindparam("slug"), projects.c.id == bindparam("id")))


async def get_project(conn: AsyncConnection, ref: str | int) -> Project:
    """Find a project by numeric id or slug."""
    ref = str(ref)
    if ref.isdecimal():
        result = await conn.execute(_BY_SLUG_OR_ID, {"slug": ref, "id": int(ref)})
    else:
        result = await conn.execute(_BY_SLUG, {"slug": ref})
    row = result.first()
    if row is None:
        raise NotFound("project")
    return Project(row.id, row.slug, row.name, dict(row.settings or {}))


async def update_settings(conn: AsyncConnection, project_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    """Merge ``changes`` into the project's settings (features keep their own keys)."""
    current = (await conn.execute(select(projects.c.settings).where(projects.c.id == project_id))).scalar()
    if current is None:
        raise NotFound("project")
    merged = {**current, **changes}
    await conn.execute(projects.update().where(projects.c.id == project_id).values(settings=merged))
    return merged


async def list_environments(conn: AsyncConnection, project_id: int) -> list[str]:
    rows = await conn.execute(
        select(environments.c.name).where(environments.c.project_id == project_id).order_by(environments.c.name)
    )
    return [r[0] for r in rows]


async def current_public_key(conn: AsyncConnection, project_id: int) -> str | None:
    return (
        await conn.execute(
            select(api_keys.c.public_value)
            .where(
                api_keys.c.project_id == project_id,
                api_keys.c.kind == "public",
                api_keys.c.revoked_at.is_(None),
                api_keys.c.expires_at.is_(None),
            )
            .order_by(api_keys.c.id.desc())
            .limit(1)
        )
    ).scalar()


async def describe(conn: AsyncConnection, project: Project, public_base: str) -> dict[str, Any]:
    public_key = await current_public_key(conn, project.id) or ""
    return {
        "id": project.id,
        "slug": project.slug,
        "name": project.name,
        "environments": await list_environments(conn, project.id),
        **client_urls(public_base, project.id, public_key),
    }
