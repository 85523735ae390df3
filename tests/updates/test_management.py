"""Channels, rollback, promotion, critical updates, minimum versions, roles, signing
chains and privacy hooks through the admin API."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shipyard.core import auth
from shipyard.core.auth import Role
from shipyard.core.context import Context
from shipyard.updates import service
from shipyard.updates.export import ExportError, read_export
from shipyard.updates.signing import certificate_pem, generate_key_and_certificate, private_key_pem
from shipyard.updates.telemetry import reports
from tests.conftest import admin_headers
from tests.updates.helpers import expo_headers, make_export, parse_multipart, publish_export


def ids(published: dict[str, Any]) -> dict[str, str]:
    return {u["platform"]: u["id"] for u in published["updates"]}


async def manifest_for(client: httpx.AsyncClient, project: dict[str, Any], **kw: Any) -> dict[str, Any]:
    response = await client.get(f"/updates/{project['id']}/manifest", headers=expo_headers(**kw))
    assert response.status_code == 200, response.text
    parts = parse_multipart(response)
    return dict(json.loads((parts.get("manifest") or parts["directive"]).body))


async def test_rollback_republishes_previous_with_new_id(
    client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path
) -> None:
    v1 = await publish_export(client, project, make_export(tmp_path, "v1"), message="v1")
    v2 = await publish_export(client, project, make_export(tmp_path, "v2"), message="v2")
    running = await manifest_for(client, project)
    assert running["id"] == ids(v2)["ios"]
    rolled = await client.post(
        f"/api/v1/projects/{project['id']}/updates/rollback",
        json={"channel": "production", "reason": "checkout broken"},
        headers=admin_headers(project),
    )
    assert rolled.status_code == 201, rolled.text
    body = rolled.json()
    assert body["rolled_back_groups"] == [v2["group_id"]]
    now = await manifest_for(client, project, current=ids(v2)["ios"])
    original = await manifest_for(client, project, runtime="1.0.0")
    assert now["id"] not in (ids(v1)["ios"], ids(v2)["ios"])
    assert now["createdAt"] > running["createdAt"]
    assert now["launchAsset"]["hash"] == original["launchAsset"]["hash"]
    # Rolling back again skips the rolled-back v2 and finds nothing older than v1.
    again = await client.post(
        f"/api/v1/projects/{project['id']}/updates/rollback",
        json={"channel": "production"},
        headers=admin_headers(project),
    )
    assert again.status_code == 409 and "embedded" in again.json()["error"]["message"]


async def test_promote_staging_to_production(
    client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path
) -> None:
    staged = await publish_export(client, project, make_export(tmp_path, "v1"), channel="staging", message="beta")
    on_staging = await manifest_for(client, project, channel="staging")
    assert on_staging["metadata"] == {"branch": "staging"}
    promoted = await client.post(
        f"/api/v1/projects/{project['id']}/updates/promote",
        json={"from_channel": "staging", "to_channel": "production"},
        headers=admin_headers(project),
    )
    assert promoted.status_code == 201, promoted.text
    assert promoted.json()["kind"] == "promote"
    on_production = await manifest_for(client, project, channel="production")
    assert on_production["launchAsset"]["hash"] == on_staging["launchAsset"]["hash"]
    assert on_production["id"] != on_staging["id"] and on_production["metadata"] == {"branch": "production"}
    history = (
        await client.get(f"/api/v1/projects/{project['id']}/updates/history", headers=admin_headers(project))
    ).json()["data"]
    assert [(h["channel"], h["metadata"]["kind"]) for h in history] == [
        ("production", "promote"),
        ("staging", "publish"),
    ]
    assert history[0]["metadata"]["source_group_id"] == staged["group_id"]


async def test_critical_index_is_monotonic(client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path) -> None:
    first = await publish_export(client, project, make_export(tmp_path, "v1"))
    crit = await publish_export(client, project, make_export(tmp_path, "v2"), critical=True, message="security fix")
    after = await publish_export(client, project, make_export(tmp_path, "v3"))
    assert (first["critical_index"], crit["critical_index"], after["critical_index"]) == (0, 1, 1)
    manifest = await manifest_for(client, project)
    # Expo's documented pattern reads manifest.extra.expoClient.extra.criticalIndex.
    assert manifest["extra"]["expoClient"]["extra"]["criticalIndex"] == 1
    assert manifest["extra"]["shipyard"]["criticalIndex"] == 1 and manifest["extra"]["shipyard"]["critical"] is False


async def test_min_app_version(client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path) -> None:
    v1 = await publish_export(client, project, make_export(tmp_path, "v1"))
    v2 = await publish_export(client, project, make_export(tmp_path, "v2"), min_app_version="2.1")
    old_app = dict(expo_headers(), **{"shipyard-app-version": "2.0.9"})
    response = await client.get(f"/updates/{project['id']}/manifest", headers=old_app)
    assert json.loads(parse_multipart(response)["manifest"].body)["id"] == ids(v1)["ios"]
    new_app = dict(expo_headers(), **{"Expo-Extra-Params": 'app-version="2.10.0"'})
    response = await client.get(f"/updates/{project['id']}/manifest", headers=new_app)
    manifest = json.loads(parse_multipart(response)["manifest"].body)
    assert manifest["id"] == ids(v2)["ios"] and manifest["extra"]["shipyard"]["minAppVersion"] == "2.1"
    # An app that does not say its version does not get an update that needs a newer binary.
    assert (await manifest_for(client, project))["id"] == ids(v1)["ios"]


async def test_channels_branches_and_default_channel(
    client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path
) -> None:
    base = f"/api/v1/projects/{project['id']}/updates"
    headers = admin_headers(project)
    listed = (await client.get(f"{base}/channels", headers=headers)).json()["data"]
    assert {(c["name"], c["branch"]) for c in listed} == {
        ("production", "production"),
        ("staging", "staging"),
        ("development", "development"),
    }
    created = await client.post(f"{base}/channels", json={"name": "beta-testers", "branch": "next"}, headers=headers)
    assert created.status_code == 201
    assert (await client.post(f"{base}/channels", json={"name": "beta-testers"}, headers=headers)).status_code == 409
    assert (await client.post(f"{base}/channels", json={"name": "bad name!"}, headers=headers)).status_code == 400
    published = await publish_export(client, project, make_export(tmp_path, "v1"), channel=None, branch="next")
    assert (await manifest_for(client, project, channel="beta-testers"))["id"] == ids(published)["ios"]
    # Point production at the same branch: production devices get it, filtered by branch.
    remapped = await client.patch(f"{base}/channels/production", json={"branch": "next"}, headers=headers)
    assert remapped.status_code == 200
    response = await client.get(f"/updates/{project['id']}/manifest", headers=expo_headers(channel="production"))
    assert response.headers["expo-manifest-filters"] == 'branch="next"'
    # Without expo-channel-name the project's default channel applies.
    assert (await manifest_for(client, project, channel=None))["id"] == ids(published)["ios"]
    moved = await client.put(f"{base}/settings", json={"default_channel": "staging"}, headers=headers)
    assert moved.status_code == 200
    assert (await manifest_for(client, project, channel=None))["type"] == "noUpdateAvailable"
    page = (await client.get(f"{base}/channels", params={"limit": 2}, headers=headers)).json()
    assert len(page["data"]) == 2 and page["next_cursor"]
    rest = (await client.get(f"{base}/channels", params={"cursor": page["next_cursor"]}, headers=headers)).json()
    assert len(rest["data"]) == 2 and rest["next_cursor"] is None


async def test_roles(client: httpx.AsyncClient, project: dict[str, Any], ctx: Context, tmp_path: Path) -> None:
    async with ctx.db.transaction() as conn:
        _id, viewer_key = await auth.create_secret_key(conn, project["id"], "viewer", role=Role.viewer)
        _id, dev_key = await auth.create_secret_key(conn, project["id"], "ci", role=Role.developer)
    base = f"/api/v1/projects/{project['id']}/updates"
    viewer = {"Authorization": f"Bearer {viewer_key}"}
    developer = {"Authorization": f"Bearer {dev_key}"}
    assert (await client.get(f"{base}/channels", headers=viewer)).status_code == 200
    assert (await client.post(f"{base}/assets/missing", json={"blobs": []}, headers=viewer)).status_code == 403
    await publish_export(client, dict(project, secret_key=dev_key), make_export(tmp_path, "v1"))
    for path, body in (
        ("/rollback", {"channel": "production"}),
        ("/promote", {"from_channel": "staging", "to_channel": "production"}),
        ("/signing/generate", {}),
    ):
        response = await client.post(base + path, json=body, headers=developer)
        assert response.status_code == 403, path
    assert (await client.put(f"{base}/policies/production", json={}, headers=developer)).status_code == 403
    assert (await client.get(f"{base}/channels")).status_code == 401
    public = {"Authorization": f"Bearer {project['public_key']}"}
    assert (await client.get(f"{base}/channels", headers=public)).status_code == 403


async def test_imported_key_with_certificate_chain(
    client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path
) -> None:
    # A root CA embedded in the app, and a leaf code-signing certificate it issued.
    root_key, root_cert = generate_key_and_certificate("Root", 5)
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Leaf")]))
        .issuer_name(root_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(root_cert.not_valid_before_utc)
        .not_valid_after(root_cert.not_valid_after_utc)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    base = f"/api/v1/projects/{project['id']}/updates"
    bad = await client.post(
        f"{base}/signing/import",
        json={"private_key_pem": private_key_pem(root_key), "certificate_pem": certificate_pem(leaf)},
        headers=admin_headers(project),
    )
    assert bad.status_code == 400 and "does not match" in bad.json()["error"]["message"]
    imported = await client.post(
        f"{base}/signing/import",
        json={
            "keyid": "leaf",
            "private_key_pem": private_key_pem(leaf_key),
            "certificate_pem": certificate_pem(leaf),
            "certificate_chain_pem": certificate_pem(leaf) + certificate_pem(root_cert),
        },
        headers=admin_headers(project),
    )
    assert imported.status_code == 201, imported.text
    assert "private" not in json.dumps((await client.get(f"{base}/signing", headers=admin_headers(project))).json())
    await publish_export(client, project, make_export(tmp_path, "v1"))
    response = await client.get(f"/updates/{project['id']}/manifest", headers=expo_headers(keyid="root"))
    parts = parse_multipart(response)
    chain = x509.load_pem_x509_certificates(parts["certificate_chain"].body)
    assert [c.subject.rfc4514_string() for c in chain] == ["CN=Leaf", "CN=Root"]
    chain[0].verify_directly_issued_by(root_cert)
    signature = parts["manifest"].headers["expo-signature"]
    sig = signature.split('sig="')[1].split('"')[0]
    import base64

    chain[0].public_key().verify(  # type: ignore[union-attr]
        base64.b64decode(sig), parts["manifest"].body, padding.PKCS1v15(), hashes.SHA256()
    )


async def test_privacy_hooks(client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path, ctx: Context) -> None:
    published = await publish_export(client, project, make_export(tmp_path, "v1"))
    device = str(uuid.uuid4())
    await manifest_for(client, project, client_id=device, current=ids(published)["ios"])
    await reports(ctx).flush()
    async with ctx.db.connect() as conn:
        exported = await service.export_user(conn, project["id"], device)
    assert exported["device"]["current_update_id"] == ids(published)["ios"]
    assert {u["update_id"] for u in exported["updates"]} == {ids(published)["ios"]}
    async with ctx.db.transaction() as conn:
        assert await service.erase_user(conn, project["id"], device) == 2
        assert (await service.export_user(conn, project["id"], device))["device"] is None


def test_export_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="metadata.json"):
        read_export(tmp_path)
    dist = make_export(tmp_path, "fp", runtime_policy={"policy": "fingerprint"})
    with pytest.raises(ExportError, match="--runtime-version"):
        read_export(dist)
    assert read_export(dist, runtime_version_flag="abc123").platforms["ios"]["runtime_version"] == "abc123"
    native = make_export(tmp_path, "nv", runtime_policy={"policy": "nativeVersion"})
    export = read_export(native)
    assert export.platforms["ios"]["runtime_version"] == "1.0.0(12)"
    meta = json.loads((native / "metadata.json").read_text())
    meta["fileMetadata"]["ios"]["bundle"] = "../../etc/passwd"
    (native / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="outside"):
        read_export(native)
