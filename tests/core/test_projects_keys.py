"""Projects, keys and roles through the admin API."""

from __future__ import annotations

from typing import Any

import httpx

from shipyard.core import auth
from shipyard.core.auth import Role
from tests.conftest import admin_headers


async def test_project_describes_client_urls(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    r = await client.get(f"/api/v1/projects/{project['slug']}", headers=admin_headers(project))
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == project["id"]
    assert body["dsn"] == f"http://{project['public_key']}@testserver/{project['id']}"
    assert body["write_key"] == project["public_key"]
    assert body["manifest_url"] == f"http://testserver/updates/{project['id']}/manifest"
    assert body["environments"] == ["development", "production", "staging"]


async def test_missing_invalid_and_public_keys_are_rejected(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    url = f"/api/v1/projects/{project['id']}/keys"
    assert (await client.get(url)).status_code == 401
    assert (await client.get(url, headers={"Authorization": "Bearer sk_nope"})).status_code == 401
    r = await client.get(url, headers={"Authorization": f"Bearer {project['public_key']}"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"


async def test_secret_key_of_another_project_is_forbidden(
    client: httpx.AsyncClient, ctx: Any, project: dict[str, Any]
) -> None:
    from shipyard.core import projects

    async with ctx.db.transaction() as conn:
        other = await projects.create_project(conn, "Other", public_base="http://testserver")
    r = await client.get(f"/api/v1/projects/{project['id']}/keys", headers=admin_headers(other))
    assert r.status_code == 403


async def test_create_rotate_revoke_secret_key(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    base = f"/api/v1/projects/{project['id']}/keys"
    created = (await client.post(base, json={"name": "ci", "role": "developer"}, headers=admin_headers(project))).json()
    ci_headers = {"Authorization": f"Bearer {created['secret_key']}"}
    # A developer key can read the project but not manage keys.
    assert (await client.get(f"/api/v1/projects/{project['id']}", headers=ci_headers)).status_code == 200
    assert (await client.get(base, headers=ci_headers)).status_code == 403

    rotated = (await client.post(f"{base}/{created['id']}/rotate", headers=admin_headers(project))).json()
    # During the overlap both keys work.
    assert (await client.get(f"/api/v1/projects/{project['id']}", headers=ci_headers)).status_code == 200
    new_headers = {"Authorization": f"Bearer {rotated['secret_key']}"}
    assert (await client.get(f"/api/v1/projects/{project['id']}", headers=new_headers)).status_code == 200

    assert (await client.delete(f"{base}/{rotated['id']}", headers=admin_headers(project))).status_code == 204
    assert (await client.get(f"/api/v1/projects/{project['id']}", headers=new_headers)).status_code == 401
    listing = (await client.get(base, headers=admin_headers(project))).json()["data"]
    assert all("secret_key" not in k for k in listing)
    assert any(k["last_used_at"] for k in listing if k["kind"] == "secret")


async def test_owner_role_cannot_be_given_to_a_key(ctx: Any, project: dict[str, Any]) -> None:
    import pytest

    from shipyard.core.errors import BadRequest

    async with ctx.db.transaction() as conn:
        with pytest.raises(BadRequest):
            await auth.create_secret_key(conn, project["id"], "x", role=Role.owner)


async def test_validation_errors_are_json(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    r = await client.post(
        f"/api/v1/projects/{project['id']}/keys", json={"role": "root"}, headers=admin_headers(project)
    )
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_request"
    assert "name" in err["message"]
