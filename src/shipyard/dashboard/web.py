"""What every dashboard page uses: templates, login-required access, CSRF, rendering.

Feature pages live in their own package (``shipyard/<feature>/templates/<feature>/``)
and extend ``base.html``; routes take ``page_access(role)`` and call :func:`render`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from functools import cache
from importlib import import_module
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape

from shipyard.core import auth, projects
from shipyard.core.audit import Actor
from shipyard.core.auth import Role
from shipyard.core.context import Context
from shipyard.core.deps import SESSION_COOKIE, client_ip, ctx_dependency
from shipyard.core.errors import ApiError
from shipyard.dashboard import charts
from shipyard.features import FEATURE_PACKAGES, NavEntry, load_features


class LoginRequired(Exception):  # noqa: N818  (control flow, answered with a redirect)
    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class PageForbidden(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(403, "forbidden", message)


@dataclass(frozen=True)
class PageAccess:
    user_id: int
    email: str
    is_instance_admin: bool
    project: projects.Project
    role: Role
    csrf_token: str
    ctx: Context

    @property
    def actor(self) -> Actor:
        return Actor(type="user", id=str(self.user_id), label=self.email)

    def can(self, role: Role) -> bool:
        return self.role >= role


@cache
def environment() -> Environment:
    dirs = [Path(__file__).parent / "templates"]
    for package in FEATURE_PACKAGES:
        module_file = import_module(package).__file__
        if module_file:
            templates = Path(module_file).parent / "templates"
            if templates.is_dir():
                dirs.append(templates)
    env = Environment(
        loader=ChoiceLoader([FileSystemLoader(str(d)) for d in dirs]),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(line_chart=charts.line_chart, bar_chart=charts.bar_chart, Role=Role)
    env.filters["dt"] = lambda v: v.strftime("%Y-%m-%d %H:%M UTC") if v else "—"
    env.filters["pct"] = lambda v: "—" if v is None else f"{v * 100:.1f} %"
    return env


def nav_entries() -> list[NavEntry]:
    return [entry for feature in load_features() for entry in feature.nav]


async def current_session(request: Request, ctx: Context) -> Any:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    async with ctx.db.connect() as conn:
        session = await auth.session_user(conn, token)
    if session is None:
        return None
    if not session.mfa_passed:
        return None
    return session


def page_access(role: Role = Role.viewer) -> Any:
    """Dependency for dashboard pages under ``/projects/{project}/…``."""

    async def dependency(request: Request, project: str, ctx: Context = Depends(ctx_dependency)) -> PageAccess:
        session = await current_session(request, ctx)
        if session is None:
            raise LoginRequired(request.url.path)
        async with ctx.db.connect() as conn:
            target = await projects.get_project(conn, project)
            member_role = (
                Role.owner if session.is_instance_admin else await auth.role_of(conn, session.user_id, target.id)
            )
        if member_role is None:
            raise PageForbidden("you are not a member of this project")
        if member_role < role:
            raise PageForbidden(f"this page needs the {role.name} role")
        return PageAccess(
            session.user_id, session.email, session.is_instance_admin, target, member_role, session.csrf_token, ctx
        )

    return dependency


async def verify_csrf(request: Request, access: PageAccess) -> dict[str, Any]:
    """Check the form's CSRF token against the session's; returns the parsed form."""
    form = await request.form()
    sent = str(form.get("csrf_token", ""))
    if not secrets.compare_digest(sent, access.csrf_token):
        raise PageForbidden("the form expired or came from another site; reload the page and try again")
    return dict(form)


async def render(
    request: Request, access: PageAccess | None, template: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    projects_list: list[Any] = []
    if access is not None:
        async with access.ctx.db.connect() as conn:
            projects_list = await auth.projects_of(conn, access.user_id)
    html = (
        environment()
        .get_template(template)
        .render(
            request=request,
            access=access,
            project=access.project if access else None,
            nav=nav_entries(),
            projects=projects_list,
            csrf_token=access.csrf_token if access else "",
            **context,
        )
    )
    return HTMLResponse(html, status_code=status_code)


def login_redirect_url(next_path: str) -> str:
    return "/login?next=" + quote(next_path, safe="/")


def client_info(request: Request) -> tuple[str | None, str | None]:
    return client_ip(request), request.headers.get("user-agent")
