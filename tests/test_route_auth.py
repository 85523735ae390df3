"""Every route of the assembled app, every feature included, is accounted for and guarded.

The routes come from ``create_app()`` itself, so a route a feature adds is checked the day it
merges, without anyone editing this file:

* **Admin routes** — under ``/api/v1``, or any route depending on ``project_access`` /
  ``user_access`` — must reject no key, an invalid key, a revoked key, a public key and a key
  of another project; and a viewer (key or dashboard session) where a developer or admin is
  needed, a developer where an admin is needed. Writes must need at least a developer.
* **Dashboard pages** (``page_access``) send a visitor without a session to the login page.
* **Client routes** (features' public routers) must be listed in ``CLIENT_ROUTES`` below with
  the credential they take; those that take one must reject a missing, unknown or revoked key.
  A new client route that is not listed fails the test until someone says how it authenticates.
"""

from __future__ import annotations

import base64
import inspect
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipyard import features
from shipyard.app import create_app
from shipyard.core import auth, projects
from shipyard.core.auth import Role
from shipyard.core.routes import RouteInfo, flat_routes
from tests.conftest import make_ctx, make_settings

FAKE_FEATURE = "tests.core.fake_feature"

# Routes open by design, with the reason.
OPEN_ROUTES = {
    "/healthz": "liveness probe",
    "/readyz": "readiness probe",
    "/metrics": "Prometheus scrape (SHIPYARD_METRICS_TOKEN guards it when set)",
    "/api/openapi.json": "the public API description",
    "/api/docs": "the API reference rendered from it",
    "/login": "the login form",
    "/logout": "ends the session named by the cookie (CSRF-checked)",
    "/": "redirects to the first project or to /login",
    "/account/totp": "TOTP enrolment: checks the session itself",
    "/static": "dashboard CSS",
}


@dataclass(frozen=True)
class ClientAuth:
    pattern: str  # regex over "METHOD /path/template"
    carrier: str  # how the key travels: bearer | basic | sentry | path | none
    why: str


# How each client-facing route authenticates. Add a line when a feature adds a route family.
CLIENT_ROUTES = [
    ClientAuth(r"^OPTIONS ", "none", "CORS preflight: browsers send no credentials"),
    # Sentry SDKs: DSN public key in X-Sentry-Auth / ?sentry_key= / the envelope header.
    ClientAuth(r"^POST /api/\{[^}]+\}/(envelope|store|security|minidump|unreal)", "sentry", "Sentry ingest"),
    # sentry-cli uploads (chunk-upload, artifact bundles) use an auth token: the secret key.
    ClientAuth(r"^(GET|POST|PUT) /api/0/", "bearer", "sentry-cli API with a secret key"),
    # Segment: write key as the HTTP Basic user (or writeKey in the body); settings by key in the path.
    ClientAuth(r"^GET /v1/(projects/)?\{write_key\}/settings$", "path", "Segment SDK settings CDN"),
    ClientAuth(r"^(GET|POST) /v1/", "basic", "Segment tracking API"),
    # expo-updates sends no key: the project id is in the manifest URL; assets are content-addressed.
    ClientAuth(r"^GET /updates/", "none", "expo-updates manifests and assets"),
    ClientAuth(r"^POST /--/api/v2/push/", "bearer", "Expo Push API (project key as access token)"),
    ClientAuth(r"^(GET|POST) /ofrep/v1/", "bearer", "OpenFeature remote evaluation: public key"),
    # Push device registration and preferences: public key in X-Shipyard-Key, leaving
    # Authorization for the app user's own token.
    ClientAuth(r"^(GET|POST|PUT|DELETE) /push/v1/", "shipyard-key", "push client API"),
    # tests/core/fake_feature.py: stands in for a feature merged after this file was written.
    ClientAuth(r"^POST /fake/\{project_id\}/ingest$", "none", "test feature: open ingest"),
    ClientAuth(r"^GET /fake/\{project_id\}/flags$", "bearer", "test feature: public key as bearer"),
]

REJECTED = {401, 403}

# POST routes that only read: queries whose definition is too rich for a query string
# (the way PostHog and Amplitude take insight queries). A viewer may call them.
READ_ONLY_POSTS = [
    r"^POST /api/v1/projects/\{project\}/analytics/insights/[a-z-]+$",
]


def dependency_calls(route: RouteInfo) -> list[Any]:
    calls: list[Any] = []

    def walk(dependant: Any) -> None:
        for sub in getattr(dependant, "dependencies", []):
            calls.append(sub.call)
            walk(sub)

    if route.dependant is not None:
        walk(route.dependant)
    return calls


def guard_of(route: RouteInfo) -> tuple[str | None, Role | None]:
    """("project" | "user" | "page" | None, the role the guard requires)."""
    for call in dependency_calls(route):
        name = getattr(call, "__qualname__", "")
        if name.startswith(("project_access.", "page_access.")):
            role = inspect.getclosurevars(call).nonlocals.get("role", Role.viewer)
            return ("project" if name.startswith("project_access.") else "page"), role
        if call is auth_user_access():
            return "user", None
    return None, None


def auth_user_access() -> Any:
    from shipyard.core.deps import user_access

    return user_access


def concrete_path(template: str, project_id: int, key: str = "pk_unknown") -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group(1).split(":")[0]
        if name == "project" or name == "project_id":
            return str(project_id)
        if name in ("write_key", "key", "public_key"):
            return key
        return "1"

    return re.sub(r"\{([^}]+)\}", fill, template)


def credential(carrier: str, key: str) -> tuple[dict[str, str], dict[str, str]]:
    """(headers, query) carrying ``key`` the way a client of this carrier sends it."""
    if carrier == "bearer":
        return {"Authorization": f"Bearer {key}"}, {}
    if carrier == "basic":
        return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}, {}
    if carrier == "shipyard-key":
        return {"X-Shipyard-Key": key}, {}
    if carrier == "sentry":
        return {"X-Sentry-Auth": f"Sentry sentry_version=7, sentry_key={key}, sentry_client=test/1"}, {}
    return {}, {}


@dataclass
class World:
    client: httpx.AsyncClient
    routes: list[RouteInfo]
    project: dict[str, Any]
    other: dict[str, Any]
    keys: dict[str, str]
    viewer_session: tuple[str, str]


@pytest.fixture
async def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    monkeypatch.setattr(features, "FEATURE_PACKAGES", [*features.FEATURE_PACKAGES, FAKE_FEATURE])
    ctx = await make_ctx(make_settings(tmp_path, rate_limit_per_ip="", rate_limit_per_key=""))
    try:
        async with ctx.db.transaction() as conn:
            project = await projects.create_project(conn, "Guarded", public_base="http://testserver")
            other = await projects.create_project(conn, "Elsewhere", public_base="http://testserver")
            keys = {"admin": project["secret_key"], "public": project["public_key"], "other": other["secret_key"]}
            for role in (Role.viewer, Role.developer):
                _id, keys[role.name] = await auth.create_secret_key(conn, project["id"], role.name, role=role)
            revoked_id, keys["revoked"] = await auth.create_secret_key(conn, project["id"], "old")
            await auth.revoke_key(conn, project["id"], revoked_id)
            keys["revoked_public"] = await auth.rotate_public_key(conn, project["id"], timedelta(0))
            await auth.revoke_key(conn, project["id"], await _key_id(conn, keys["revoked_public"]))
            user_id = await auth.create_user(conn, f"viewer-{uuid.uuid4().hex[:6]}@example.com", "viewer password 123")
            await auth.set_role(conn, user_id, project["id"], Role.viewer)
            session = await auth.create_session(
                conn, user_id, timedelta(hours=1), mfa_passed=True, ip=None, user_agent="test"
            )
        app = create_app(ctx=ctx)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client,
        ):
            yield World(client, flat_routes(app.router.routes), project, other, keys, session)
    finally:
        await ctx.close()


async def _key_id(conn: Any, public_value: str) -> int:
    from sqlalchemy import select

    from shipyard.core.models import api_keys

    return int((await conn.execute(select(api_keys.c.id).where(api_keys.c.public_value == public_value))).scalar_one())


async def call(world: World, method: str, path: str, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
    if method in ("POST", "PUT", "PATCH"):
        kwargs.setdefault("json", {})
    return await world.client.request(method, path, headers=headers, **kwargs)


def operations(routes: list[RouteInfo]) -> list[tuple[str, RouteInfo]]:
    return [(m, r) for r in routes for m in sorted(r.methods - {"HEAD"})]


async def test_every_admin_route_rejects_missing_wrong_and_weak_credentials(world: World) -> None:
    checked = 0
    failures: list[str] = []
    for method, route in operations(world.routes):
        kind, role = guard_of(route)
        if route.path.startswith("/api/v1") and kind not in ("project", "user"):
            failures.append(f"{method} {route.path}: under /api/v1 but has no project_access/user_access guard")
            continue
        if kind not in ("project", "user"):
            continue
        read_only = any(re.search(p, f"{method} {route.path}") for p in READ_ONLY_POSTS)
        if kind == "project" and method != "GET" and not read_only and role is not None and role < Role.developer:
            failures.append(f"{method} {route.path}: changes state but a viewer may call it")
        path = concrete_path(route.path, world.project["id"])
        attempts: list[tuple[str, dict[str, str]]] = [
            ("no key", {}),
            ("invalid key", {"Authorization": "Bearer sk_" + "x" * 40}),
            ("revoked key", {"Authorization": f"Bearer {world.keys['revoked']}"}),
            ("public key", {"Authorization": f"Bearer {world.keys['public']}"}),
            ("garbage scheme", {"Authorization": "Basic Zm9vOmJhcg=="}),
        ]
        if kind == "project":
            attempts.append(("another project's key", {"Authorization": f"Bearer {world.keys['other']}"}))
            if role is not None and role > Role.viewer:
                token, csrf = world.viewer_session
                attempts.append(("viewer key", {"Authorization": f"Bearer {world.keys['viewer']}"}))
                attempts.append(("viewer session", {"Cookie": f"shipyard_session={token}", "X-CSRF-Token": csrf}))
            if role is not None and role > Role.developer:
                attempts.append(("developer key", {"Authorization": f"Bearer {world.keys['developer']}"}))
        for label, headers in attempts:
            r = await call(world, method, path, headers)
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            if r.status_code not in REJECTED or "error" not in body:
                failures.append(f"{method} {route.path} with {label}: {r.status_code} {r.text[:120]}")
        checked += 1
    assert not failures, "\n".join(failures)
    assert checked >= 10  # core alone has this many; features add theirs


async def test_dashboard_pages_send_visitors_to_login(world: World) -> None:
    failures = []
    for method, route in operations(world.routes):
        kind, _role = guard_of(route)
        if kind != "page":
            continue
        r = await call(world, method, concrete_path(route.path, world.project["id"]), {}, data={"csrf_token": "x"})
        if r.status_code != 303 or not r.headers["location"].startswith("/login"):
            failures.append(f"{method} {route.path}: {r.status_code}")
    assert not failures, failures


async def test_every_client_route_is_listed_with_its_credential_and_rejects_bad_keys(world: World) -> None:
    unlisted: list[str] = []
    failures: list[str] = []
    listed = 0
    for method, route in operations(world.routes):
        kind, _role = guard_of(route)
        top = "/" + route.path.split("/")[1] if route.path != "/" else "/"
        if kind is not None or route.path.startswith("/api/v1") or route.path in OPEN_ROUTES or top in OPEN_ROUTES:
            continue
        signature = f"{method} {route.path}"
        rule = next((c for c in CLIENT_ROUTES if re.search(c.pattern, signature)), None)
        if rule is None:
            unlisted.append(signature)
            continue
        listed += 1
        if rule.carrier == "none":
            continue
        for label, key in (
            ("no key", ""),
            ("unknown key", "pk_" + "0" * 32),
            ("revoked key", world.keys["revoked_public"]),
        ):
            if rule.carrier == "path":
                if not key:
                    continue
                path = concrete_path(route.path, world.project["id"], key=key)
                headers, query = {}, {}
            else:
                path = concrete_path(route.path, world.project["id"])
                headers, query = credential(rule.carrier, key) if key else ({}, {})
            r = await call(world, method, path, headers, params=query)
            allowed = REJECTED | ({404} if rule.carrier == "path" else set())
            if r.status_code not in allowed:
                failures.append(f"{signature} ({rule.why}) with {label}: {r.status_code} {r.text[:120]}")
    assert not unlisted, (
        "client-facing routes not listed in tests/test_route_auth.py CLIENT_ROUTES (say how they authenticate): "
        + ", ".join(unlisted)
    )
    assert not failures, "\n".join(failures)
    assert listed >= 2
