"""Notification templates: per-locale title and body with ``{variable}`` placeholders."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.db import upsert, utcnow
from shipyard.core.errors import BadRequest, NotFound
from shipyard.push.models import templates

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]{0,63})\}")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")


def placeholders(text: str) -> set[str]:
    return set(_PLACEHOLDER.findall(text or ""))


def render(text: str | None, variables: dict[str, Any]) -> str | None:
    """Fill ``{name}`` (or ``{a.b}`` for nested values); unknown names stay visible."""
    if text is None:
        return None

    def value(match: re.Match[str]) -> str:
        current: Any = variables
        for part in match.group(1).split("."):
            if not isinstance(current, dict) or part not in current:
                return match.group(0)
            current = current[part]
        return str(current)

    return _PLACEHOLDER.sub(value, text)


def pick_locale(texts: dict[str, Any], wanted: str | None, default: str) -> str:
    """``de-AT`` → ``de-AT``, else ``de``, else the template's default locale."""
    if wanted:
        normal = wanted.replace("_", "-")
        candidates = [normal, normal.split("-")[0]]
        lowered = {k.lower(): k for k in texts}
        for c in candidates:
            if c.lower() in lowered:
                return lowered[c.lower()]
    return default


async def put_template(conn: AsyncConnection, project_id: int, name: str, body: dict[str, Any]) -> dict[str, Any]:
    texts = body.get("texts") or {}
    if not texts or not isinstance(texts, dict):
        raise BadRequest("a template needs texts: {locale: {title, body}}")
    for locale, text in texts.items():
        if not _LOCALE.match(locale):
            raise BadRequest(f"{locale!r} is not a locale (e.g. en, de-DE)")
        if not isinstance(text, dict) or not (text.get("title") or text.get("body")):
            raise BadRequest(f"texts.{locale} needs a title or a body")
    default = body.get("default_locale") or next(iter(texts))
    if default not in texts:
        raise BadRequest(f"default_locale {default!r} has no text")
    now = utcnow()
    values = {
        "project_id": project_id,
        "name": name,
        "default_locale": default,
        "texts": texts,
        "category": body.get("category"),
        "data": body.get("data") or {},
        "created_at": now,
        "updated_at": now,
    }
    changes = {k: v for k, v in values.items() if k not in ("project_id", "name", "created_at")}
    await conn.execute(upsert(conn, templates, values, conflict_columns=["project_id", "name"], update=changes))
    return await get_template(conn, project_id, name)


async def get_template(conn: AsyncConnection, project_id: int, name: str) -> dict[str, Any]:
    row = (
        await conn.execute(select(templates).where(templates.c.project_id == project_id, templates.c.name == name))
    ).first()
    if row is None:
        raise NotFound(f"template {name!r}")
    return dict(row._mapping)


async def list_templates(conn: AsyncConnection, project_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(select(templates).where(templates.c.project_id == project_id).order_by(templates.c.name))
    return [dict(r._mapping) for r in rows]


async def delete_template(conn: AsyncConnection, project_id: int, name: str) -> bool:
    result = await conn.execute(delete(templates).where(templates.c.project_id == project_id, templates.c.name == name))
    return bool(result.rowcount)


def missing_variables(template: dict[str, Any], variables: dict[str, Any]) -> list[str]:
    """Placeholders of any locale that ``variables`` does not provide."""
    needed: set[str] = set()
    for text in template["texts"].values():
        needed |= placeholders(text.get("title") or "") | placeholders(text.get("body") or "")
    missing = []
    for name in sorted(needed):
        current: Any = variables
        for part in name.split("."):
            if not isinstance(current, dict) or part not in current:
                missing.append(name)
                break
            current = current[part]
    return missing


def render_for(
    template: dict[str, Any], locale: str | None, variables: dict[str, Any]
) -> tuple[str | None, str | None]:
    chosen = pick_locale(template["texts"], locale, template["default_locale"])
    text = template["texts"][chosen]
    return render(text.get("title"), variables), render(text.get("body"), variables)
