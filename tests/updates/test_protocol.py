"""Conformance with the Expo Updates protocol (spec v1, and v0), requesting exactly as
expo-updates does and checking what the client checks."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import brotli
import http_sfv
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.conftest import admin_headers
from tests.updates.helpers import PROJECT_UUID, expo_headers, make_export, parse_multipart, publish_export


def b64url_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")


def manifest_url(project: dict[str, Any]) -> str:
    return f"/updates/{project['id']}/manifest"


async def fetch(client: httpx.AsyncClient, project: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return await client.get(manifest_url(project), headers=expo_headers(**kwargs))


def check_common_headers(response: httpx.Response, protocol: int = 1) -> None:
    assert response.headers["expo-protocol-version"] == str(protocol)
    assert response.headers["expo-sfv-version"] == "0"
    assert response.headers["cache-control"] == "private, max-age=0"
    assert "expo-server-defined-headers" in response.headers
    filters = http_sfv.Dictionary()
    filters.parse(response.headers["expo-manifest-filters"].encode())
    assert str(filters["branch"].value) == "production"


async def download_and_verify(client: httpx.AsyncClient, asset: dict[str, Any], encoding: str = "identity") -> bytes:
    path = httpx.URL(asset["url"]).raw_path.decode()
    response = await client.get(path, headers={"Accept-Encoding": encoding, "Accept": "application/javascript"})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["content-type"].split(";")[0] == asset["contentType"]
    # httpx transparently decodes gzip/br; the hash must hold for the decoded bytes.
    assert b64url_sha256(response.content) == asset["hash"]
    return response.content


async def test_manifest_multipart_as_expo_updates_sees_it(
    client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path
) -> None:
    dist = make_export(tmp_path, "v1")
    published = await publish_export(client, project, dist, message="first")
    for platform in ("ios", "android"):
        response = await fetch(client, project, platform=platform)
        assert response.status_code == 200, response.text
        check_common_headers(response)
        parts = parse_multipart(response)
        assert set(parts) == {"manifest", "extensions"}
        assert parts["manifest"].headers["content-type"].startswith("application/json")
        manifest = json.loads(parts["manifest"].body)
        ours = next(u for u in published["updates"] if u["platform"] == platform)
        assert manifest["id"] == ours["id"]
        uuid.UUID(manifest["id"])
        assert manifest["createdAt"].endswith("Z")
        datetime.fromisoformat(manifest["createdAt"].replace("Z", "+00:00"))
        assert manifest["runtimeVersion"] == "1.0.0"  # appVersion policy resolved from the export's config
        assert manifest["metadata"] == {"branch": "production"}
        assert manifest["extra"]["expoClient"]["slug"] == "canabro"
        assert manifest["extra"]["eas"] == {"projectId": PROJECT_UUID}
        launch = manifest["launchAsset"]
        assert launch["contentType"] == "application/javascript"
        assert "fileExtension" not in launch
        assert {a["fileExtension"] for a in manifest["assets"]} == {".png", ".ttf"}
        assert {a["contentType"] for a in manifest["assets"]} == {"image/png", "font/ttf"}
        bundle = await download_and_verify(client, launch)
        assert bundle.startswith(b"\xc6\x1f\xbc\x03")
        for asset in manifest["assets"]:
            data = await download_and_verify(client, asset)
            assert hashlib.md5(data).hexdigest() == asset["key"]  # keys are md5, as EAS and the reference do
        extensions = json.loads(parts["extensions"].body)
        assert extensions == {"assetRequestHeaders": {}}


async def test_assets_compressed_when_accepted(
    client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path
) -> None:
    await publish_export(client, project, make_export(tmp_path, "v1"))
    manifest = json.loads(parse_multipart(await fetch(client, project))["manifest"].body)
    path = httpx.URL(manifest["launchAsset"]["url"]).raw_path.decode()
    raw = {}
    for coding, decode in (("br", brotli.decompress), ("gzip", gzip.decompress)):
        # Read the encoded bytes ourselves, as OkHttp's interceptors do.
        async with client.stream("GET", path, headers={"Accept-Encoding": coding}) as response:
            encoded = b"".join([chunk async for chunk in response.aiter_raw()])
            assert response.headers["content-encoding"] == coding
            assert response.headers["vary"] == "accept-encoding"
        plain = decode(encoded)
        assert len(encoded) < len(plain) / 2
        assert b64url_sha256(plain) == manifest["launchAsset"]["hash"]
        raw[coding] = plain
    assert raw["br"] == raw["gzip"]
    # A PNG is not worth compressing: served as is whatever the client accepts.
    png = next(a for a in manifest["assets"] if a["contentType"] == "image/png")
    response = await client.get(httpx.URL(png["url"]).raw_path.decode(), headers={"Accept-Encoding": "br, gzip"})
    assert "content-encoding" not in response.headers


async def test_no_update_available_and_204(client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path) -> None:
    published = await publish_export(client, project, make_export(tmp_path, "v1"))
    current = next(u["id"] for u in published["updates"] if u["platform"] == "ios")
    response = await fetch(client, project, current=current, embedded=str(uuid.uuid4()))
    assert response.status_code == 200
    parts = parse_multipart(response)
    assert set(parts) == {"directive"}
    assert json.loads(parts["directive"].body) == {"type": "noUpdateAvailable"}
    # A client that only takes JSON gets 204 with protocol 1 (a no-op for expo-updates).
    json_only = await fetch(client, project, current=current, accept="application/expo+json, application/json")
    assert json_only.status_code == 204
    assert json_only.headers["expo-protocol-version"] == "1"
    assert json_only.content == b""
    # Nothing published for this runtime version: noUpdateAvailable, not an error.
    other = await fetch(client, project, runtime="9.9.9")
    assert json.loads(parse_multipart(other)["directive"].body) == {"type": "noUpdateAvailable"}


async def test_protocol_v0_json(client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path) -> None:
    published = await publish_export(client, project, make_export(tmp_path, "v1"))
    android = next(u["id"] for u in published["updates"] if u["platform"] == "android")
    response = await fetch(
        client, project, platform="android", protocol=None, accept="application/expo+json,application/json"
    )
    assert response.status_code == 200
    check_common_headers(response, protocol=0)
    assert response.headers["content-type"].startswith("application/expo+json")
    manifest = response.json()
    assert manifest["id"] == android
    assert manifest["metadata"] and manifest["extra"]
    # v0 has no directives: a current device gets the same manifest again (the client ignores it).
    again = await fetch(client, project, platform="android", protocol=0, current=android, accept="application/json")
    assert again.status_code == 200 and again.json()["id"] == android
    assert again.headers["content-type"].startswith("application/json")
    missing = await fetch(client, project, platform="android", protocol=0, runtime="0.0.1")
    assert missing.status_code == 404


async def test_bad_requests_are_clear(client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path) -> None:
    await publish_export(client, project, make_export(tmp_path, "v1"))
    url = manifest_url(project)
    cases: list[tuple[dict[str, str], int, str]] = []
    base = expo_headers()
    without_platform = {k: v for k, v in base.items() if k != "Expo-Platform"}
    cases.append((without_platform, 400, "expo-platform"))
    cases.append(({**base, "Expo-Platform": "web"}, 400, "ios or android"))
    cases.append(({k: v for k, v in base.items() if k != "Expo-Runtime-Version"}, 400, "expo-runtime-version"))
    cases.append(({**base, "Expo-Protocol-Version": "7"}, 406, "expo-protocol-version"))
    cases.append(({**base, "Accept": "text/html"}, 406, "accept"))
    cases.append(({**base, "expo-channel-name": "nope"}, 404, "channel 'nope'"))
    cases.append(({**base, "Expo-Current-Update-ID": "not-a-uuid"}, 400, "expo-current-update-id"))
    cases.append(({**base, "Expo-Recent-Failed-Update-IDs": "(broken"}, 400, "expo-recent-failed-update-ids"))
    cases.append(({**base, "expo-expect-signature": 'sig, keyid="main"'}, 400, "signing key"))
    for headers, status, needle in cases:
        response = await client.get(url, headers=headers)
        assert response.status_code == status, (headers, response.text)
        assert needle in response.json()["error"]["message"], response.text
    unknown = await client.get("/updates/999999/manifest", headers=base)
    assert unknown.status_code == 404


async def test_signed_manifest_and_directive_verify_with_certificate(
    client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path
) -> None:
    generated = await client.post(
        f"/api/v1/projects/{project['id']}/updates/signing/generate",
        json={"keyid": "main"},
        headers=admin_headers(project),
    )
    assert generated.status_code == 201, generated.text
    cert = x509.load_pem_x509_certificate(generated.json()["certificate_pem"].encode())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical and ExtendedKeyUsageOID.CODE_SIGNING in eku.value
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    published = await publish_export(client, project, make_export(tmp_path, "v1"))

    def verify(part: Any) -> None:
        header = http_sfv.Dictionary()
        header.parse(part.headers["expo-signature"].encode())
        assert str(header["keyid"].value) == "main"
        assert str(header["alg"].value) == "rsa-v1_5-sha256"
        signature = base64.b64decode(str(header["sig"].value))
        cert.public_key().verify(signature, part.body, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]

    response = await fetch(client, project, keyid="main")
    parts = parse_multipart(response)
    verify(parts["manifest"])
    assert "certificate_chain" not in parts
    current = next(u["id"] for u in published["updates"] if u["platform"] == "ios")
    directive = parse_multipart(await fetch(client, project, keyid="main", current=current))["directive"]
    verify(directive)
    # The app embedded another keyid: say so instead of failing on the device.
    mismatch = await fetch(client, project, keyid="root")
    assert mismatch.status_code == 400 and "keyid" in mismatch.json()["error"]["message"]
    # JSON responses carry the signature as a response header over the body.
    json_response = await fetch(client, project, keyid="main", accept="application/expo+json")
    header = http_sfv.Dictionary()
    header.parse(json_response.headers["expo-signature"].encode())
    cert.public_key().verify(  # type: ignore[union-attr]
        base64.b64decode(str(header["sig"].value)), json_response.content, padding.PKCS1v15(), hashes.SHA256()
    )


async def test_rollback_to_embedded_directive(
    client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path
) -> None:
    published = await publish_export(client, project, make_export(tmp_path, "v1"))
    ios = next(u for u in published["updates"] if u["platform"] == "ios")
    running = json.loads(parse_multipart(await fetch(client, project))["manifest"].body)
    rolled = await client.post(
        f"/api/v1/projects/{project['id']}/updates/rollback",
        json={"channel": "production", "to_embedded": True, "reason": "bad build"},
        headers=admin_headers(project),
    )
    assert rolled.status_code == 201, rolled.text
    embedded = str(uuid.uuid4())
    response = await fetch(client, project, current=ios["id"], embedded=embedded)
    directive = json.loads(parse_multipart(response)["directive"].body)
    assert directive["type"] == "rollBackToEmbedded"
    commit_time = datetime.fromisoformat(directive["parameters"]["commitTime"].replace("Z", "+00:00"))
    assert commit_time > datetime.fromisoformat(running["createdAt"].replace("Z", "+00:00"))
    # A device already on its embedded update has nothing to do.
    settled = await fetch(client, project, current=embedded, embedded=embedded)
    assert json.loads(parse_multipart(settled)["directive"].body) == {"type": "noUpdateAvailable"}
    # JSON-only clients cannot take a directive.
    assert (await fetch(client, project, current=ios["id"], accept="application/json")).status_code == 406
    # Publishing again wins over the rollback, with a later createdAt.
    again = await publish_export(client, project, make_export(tmp_path, "v2"))
    manifest = json.loads(
        parse_multipart(await fetch(client, project, current=embedded, embedded=embedded))["manifest"].body
    )
    assert manifest["id"] == next(u["id"] for u in again["updates"] if u["platform"] == "ios")
    assert datetime.fromisoformat(manifest["createdAt"].replace("Z", "+00:00")) > commit_time


async def test_asset_paths_cannot_escape(client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path) -> None:
    await publish_export(client, project, make_export(tmp_path, "v1"))
    pid = project["id"]
    probes = [
        f"/updates/{pid}/assets/..%2F..%2Fsecret.key",
        f"/updates/{pid}/assets/%2e%2e%2f%2e%2e%2fshipyard.db",
        f"/updates/{pid}/assets/....................................%2Fetc",
        f"/updates/{pid}/assets/" + "a" * 43,
        f"/updates/{pid}/assets/" + "0" * 64,
        f"/updates/{pid}/assets/%00" + "a" * 42,
    ]
    for path in probes:
        response = await client.get(path)
        assert response.status_code == 404, path
        assert b"secret" not in response.content and b"SQLite" not in response.content
    other_project_asset = await client.get("/updates/999999/assets/" + "A" * 43)
    assert other_project_asset.status_code == 404


async def test_publish_is_atomic_and_deduplicated(
    client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path
) -> None:
    from shipyard.updates.export import read_export

    first = await publish_export(client, project, make_export(tmp_path, "v1"))
    headers = admin_headers(project)
    base = f"/api/v1/projects/{project['id']}/updates"
    dist = make_export(tmp_path, "v2")
    export = read_export(dist)
    missing = (
        await client.post(f"{base}/assets/missing", json={"blobs": sorted(export.files)}, headers=headers)
    ).json()
    # The icon shared with v1 is not uploaded twice.
    assert 0 < len(missing["missing"]) < len(export.files)
    # Commit before uploading: refused, and nothing becomes visible.
    body = {"channel": "production", "platforms": export.platforms, "expo_config": export.expo_config}
    refused = await client.post(f"{base}/publish", json=body, headers=headers)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "missing_assets"
    assert sorted(refused.json()["error"]["details"]["missing"]) == sorted(missing["missing"])
    manifest = json.loads(parse_multipart(await fetch(client, project))["manifest"].body)
    assert manifest["id"] == next(u["id"] for u in first["updates"] if u["platform"] == "ios")
    # A corrupted upload is rejected by its hash.
    digest = missing["missing"][0]
    bad = await client.put(f"{base}/blobs/{digest}", content=b"not the file", headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "hash_mismatch"
    # Upload for real, then commit.
    second = await publish_export(client, project, dist)
    manifest = json.loads(parse_multipart(await fetch(client, project))["manifest"].body)
    assert manifest["id"] == next(u["id"] for u in second["updates"] if u["platform"] == "ios")
    assert second["created_at"] > first["created_at"]
