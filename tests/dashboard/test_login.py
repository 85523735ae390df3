"""Dashboard login: CSRF, lockout, sessions, roles, TOTP."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pyotp

from shipyard.core.deps import SESSION_COOKIE


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "page has no CSRF field"
    return match.group(1)


async def login(client: httpx.AsyncClient, email: str, password: str, **extra: str) -> httpx.Response:
    page = await client.get("/login")
    return await client.post(
        "/login", data={"email": email, "password": password, "csrf_token": _csrf(page.text), "next": "/", **extra}
    )


async def test_login_reaches_the_project_overview(client: httpx.AsyncClient, project: dict[str, Any], ctx: Any) -> None:
    from shipyard.core import auth

    async with ctx.db.connect() as conn:
        email = (
            await conn.execute(
                __import__("sqlalchemy").text("SELECT email FROM users WHERE id = :id"), {"id": project["owner_id"]}
            )
        ).scalar_one()
    assert (await client.get(f"/projects/{project['slug']}")).status_code == 303  # not logged in → login
    r = await login(client, email, project["owner_password"])
    assert r.status_code == 303 and SESSION_COOKIE in r.cookies
    page = await client.get(f"/projects/{project['slug']}")
    assert page.status_code == 200
    assert project["dsn"] in page.text and project["manifest_url"] in page.text
    assert auth  # imported for clarity of what is exercised


async def test_login_form_without_csrf_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post("/login", data={"email": "a@b.c", "password": "x" * 12, "csrf_token": "forged"})
    assert r.status_code == 400


async def test_lockout_after_repeated_failures(client: httpx.AsyncClient, ctx: Any) -> None:
    from shipyard.core import auth

    async with ctx.db.transaction() as conn:
        await auth.create_user(conn, "lock@example.com", "the right password!")
    for _ in range(ctx.settings.login_max_failures):
        assert (await login(client, "lock@example.com", "wrong password..")).status_code == 401
    r = await login(client, "lock@example.com", "the right password!")
    assert r.status_code == 401 and "locked" in r.text


async def test_dashboard_form_post_needs_the_session_csrf_token(
    client: httpx.AsyncClient, ctx: Any, project: dict[str, Any]
) -> None:
    from shipyard.core import alerts, auth

    async with ctx.db.transaction() as conn:
        await auth.create_user(conn, "boss@example.com", "a long password!", instance_admin=True)
        alert_id = await alerts.raise_alert(
            conn, ctx, project_id=project["id"], source="t", dedup_key="k", severity="error", summary="broken"
        )
    await login(client, "boss@example.com", "a long password!")
    url = f"/projects/{project['slug']}/alerts/{alert_id}/resolve"
    assert (await client.post(url, data={"csrf_token": "nope"})).status_code == 403
    page = await client.get(f"/projects/{project['slug']}/alerts")
    assert "broken" in page.text
    assert (await client.post(url, data={"csrf_token": _csrf(page.text)})).status_code == 303
    assert "resolved" in (await client.get(f"/projects/{project['slug']}/alerts?status=resolved")).text


async def test_viewer_cannot_open_another_projects_pages(
    client: httpx.AsyncClient, ctx: Any, project: dict[str, Any]
) -> None:
    from shipyard.core import auth, projects

    async with ctx.db.transaction() as conn:
        other = await projects.create_project(conn, "Other", public_base="http://testserver")
        await auth.create_user(conn, "v@example.com", "viewer password!")
    await login(client, "v@example.com", "viewer password!")
    r = await client.get(f"/projects/{other['slug']}", headers={"accept": "text/html"})
    assert r.status_code == 403


async def test_totp_enrolment_then_required_at_login(tmp_path: Any) -> None:
    from shipyard.app import create_app
    from shipyard.core import auth, projects
    from shipyard.core.auth import Role
    from tests.conftest import make_ctx, make_settings

    ctx = await make_ctx(make_settings(tmp_path, require_totp_for_admins=True))
    async with ctx.db.transaction() as conn:
        p = await projects.create_project(conn, "Secure", public_base="http://testserver")
        uid = await auth.create_user(conn, "admin@example.com", "admin password!")
        await auth.set_role(conn, uid, p["id"], Role.admin)
    app = create_app(ctx=ctx)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client,
    ):
        r = await login(client, "admin@example.com", "admin password!")
        assert r.headers["location"] == "/account/totp"
        # Until enrolled, project pages stay closed, and so does the admin API for this session.
        assert (await client.get(f"/projects/{p['slug']}")).status_code == 303
        refused = await client.get(f"/api/v1/projects/{p['slug']}")
        assert refused.status_code == 403 and "two-factor" in refused.json()["error"]["message"]
        enroll = await client.get("/account/totp")
        secret = re.search(r'name="secret" value="([A-Z2-7]+)"', enroll.text).group(1)  # type: ignore[union-attr]
        r = await client.post(
            "/account/totp", data={"secret": secret, "code": pyotp.TOTP(secret).now(), "csrf_token": _csrf(enroll.text)}
        )
        assert r.status_code == 303
        assert (await client.get(f"/projects/{p['slug']}")).status_code == 200
        assert (await client.get(f"/api/v1/projects/{p['slug']}")).status_code == 200
        client.cookies.clear()
        r = await login(client, "admin@example.com", "admin password!")
        assert r.status_code == 401 and "authenticator" in r.text
        r = await login(client, "admin@example.com", "admin password!", totp=pyotp.TOTP(secret).now())
        assert r.status_code == 303
    await ctx.close()
