"""Update assets in S3-compatible storage, against a local moto S3 server (no AWS):
proxied through Shipyard, redirected to presigned URLs, or to a CDN / public-bucket base
URL. Each time the bytes the app ends up with must hash to the manifest's ``hash``, with
the asset's content type, and compressed only when the client asked for it."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import brotli
import httpx
import pytest

from shipyard.app import create_app
from shipyard.core import auth, projects
from shipyard.core.auth import Role
from shipyard.core.context import Context
from tests.conftest import free_port, make_ctx, make_settings
from tests.updates.helpers import expo_headers, make_export, parse_multipart, publish_export


def b64url_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


async def s3_client(
    tmp_path: Path, endpoint: str, **overrides: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any, Context]]:
    bucket = "ota-" + uuid.uuid4().hex[:10]
    settings = make_settings(
        tmp_path,
        blob_backend="s3",
        s3_endpoint_url=endpoint,
        s3_bucket=bucket,
        s3_access_key_id="test",
        s3_secret_access_key="test",
        **{k: v.replace("{bucket}", bucket) if isinstance(v, str) else v for k, v in overrides.items()},
    )
    ctx = await make_ctx(settings)
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    s3.create_bucket(Bucket=bucket)
    if settings.cdn_base_url:
        # What a CDN origin or a public bucket needs: anonymous reads of the blobs.
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "s3:GetObject",
                    "Resource": f"arn:aws:s3:::{bucket}/blobs/*",
                }
            ],
        }
        s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    async with ctx.db.transaction() as conn:
        name = "S3 App " + uuid.uuid4().hex[:6]
        project = await projects.create_project(conn, name, public_base=settings.public_base)
        user_id = await auth.create_user(conn, f"o-{uuid.uuid4().hex[:6]}@example.com", "correct horse battery")
        await auth.set_role(conn, user_id, project["id"], Role.owner)
    app = create_app(ctx=ctx)
    try:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as c,
        ):
            yield c, project, ctx
    finally:
        await ctx.close()


async def _manifest(client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    await publish_export(client, project, make_export(tmp_path, "v1"))
    response = await client.get(f"/updates/{project['id']}/manifest", headers=expo_headers())
    assert response.status_code == 200, response.text
    return dict(json.loads(parse_multipart(response)["manifest"].body))


def _assets(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [manifest["launchAsset"], *manifest["assets"]]


async def test_s3_proxied_with_compression(s3_endpoint: str, tmp_path: Path) -> None:
    async for client, project, _ctx in s3_client(tmp_path, s3_endpoint):
        manifest = await _manifest(client, project, tmp_path)
        for asset in _assets(manifest):
            path = httpx.URL(asset["url"]).raw_path.decode()
            plain = await client.get(path, headers={"Accept-Encoding": "identity"})
            assert plain.status_code == 200
            assert plain.headers["content-type"].split(";")[0] == asset["contentType"]
            assert plain.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert b64url_sha256(plain.content) == asset["hash"]
        launch = httpx.URL(manifest["launchAsset"]["url"]).raw_path.decode()
        for coding, decode in (("br", brotli.decompress), ("gzip", gzip.decompress)):
            async with client.stream("GET", launch, headers={"Accept-Encoding": coding}) as response:
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
                assert response.headers["content-encoding"] == coding
            assert b64url_sha256(decode(raw)) == manifest["launchAsset"]["hash"]
        # Traversal-shaped keys never reach the bucket.
        for probe in ("..%2F..%2Fblobs", "%2e%2e%2f" * 5 + "x", "A" * 43):
            assert (await client.get(f"/updates/{project['id']}/assets/{probe}")).status_code == 404


async def test_s3_presigned_redirect_keeps_type_and_encoding(s3_endpoint: str, tmp_path: Path) -> None:
    async for client, project, _ctx in s3_client(tmp_path, s3_endpoint, s3_presign=True):
        manifest = await _manifest(client, project, tmp_path)
        async with httpx.AsyncClient(timeout=10) as outside:  # the device, following the 302 to the bucket
            for asset in _assets(manifest):
                for coding in ("identity", "br", "gzip"):
                    path = httpx.URL(asset["url"]).raw_path.decode()
                    redirect = await client.get(path, headers={"Accept-Encoding": coding})
                    assert redirect.status_code == 302
                    target = redirect.headers["location"]
                    assert target.startswith(s3_endpoint) and "X-Amz-Signature=" in target
                    assert redirect.headers["vary"] == "accept-encoding"
                    async with outside.stream("GET", target, headers={"Accept-Encoding": coding}) as got:
                        raw = b"".join([chunk async for chunk in got.aiter_raw()])
                        assert got.status_code == 200
                        assert got.headers["content-type"] == asset["contentType"]
                        assert got.headers["cache-control"] == "public, max-age=31536000, immutable"
                        encoding = got.headers.get("content-encoding")
                    if asset is manifest["launchAsset"] and coding != "identity":
                        assert encoding == coding  # the JS bundle compresses well
                    data = {"br": brotli.decompress, "gzip": gzip.decompress}.get(encoding or "", bytes)(raw)
                    assert b64url_sha256(data) == asset["hash"]
        # A presigned URL cannot be bent to another object.
        target = (await client.get(httpx.URL(manifest["launchAsset"]["url"]).raw_path.decode())).headers["location"]
        tampered = target.replace("/blobs/", "/blobs/0")
        async with httpx.AsyncClient() as outside:
            assert (await outside.get(tampered)).status_code in (403, 404)


async def test_cdn_or_public_bucket_base_url(s3_endpoint: str, tmp_path: Path) -> None:
    # A public bucket's own URL is the simplest "CDN": direct, unsigned object URLs. It
    # answers with the metadata stored on the object, so each asset must arrive with its
    # own content type, immutable caching and, when compressed, its content encoding.
    async for client, project, _ctx in s3_client(tmp_path, s3_endpoint, cdn_base_url=s3_endpoint + "/{bucket}"):
        manifest = await _manifest(client, project, tmp_path)
        async with httpx.AsyncClient(timeout=10) as outside:
            for asset in _assets(manifest):
                for coding in ("identity", "br", "gzip"):
                    redirect = await client.get(
                        httpx.URL(asset["url"]).raw_path.decode(), headers={"Accept-Encoding": coding}
                    )
                    assert redirect.status_code == 302
                    assert redirect.headers["vary"] == "accept-encoding"
                    target = redirect.headers["location"]
                    assert target.startswith(s3_endpoint + "/ota-") and "X-Amz-Signature" not in target
                    async with outside.stream("GET", target, headers={"Accept-Encoding": coding}) as got:
                        raw = b"".join([chunk async for chunk in got.aiter_raw()])
                        assert got.status_code == 200
                        assert got.headers["content-type"] == asset["contentType"]
                        assert got.headers["cache-control"] == "public, max-age=31536000, immutable"
                        encoding = got.headers.get("content-encoding")
                    if asset is manifest["launchAsset"]:
                        assert encoding == (None if coding == "identity" else coding)
                    else:
                        assert encoding in (None, coding)  # never an encoding the client refused
                    data = {"br": brotli.decompress, "gzip": gzip.decompress}.get(encoding or "", bytes)(raw)
                    assert b64url_sha256(data) == asset["hash"]


async def test_cdn_copies_are_written_for_assets_published_before(s3_endpoint: str, tmp_path: Path) -> None:
    # Assets published before served copies existed (or whose copy was deleted) get one on
    # their first request, so upgrading a CDN deployment needs no migration step.
    async for client, project, ctx in s3_client(tmp_path, s3_endpoint, cdn_base_url=s3_endpoint + "/{bucket}"):
        manifest = await _manifest(client, project, tmp_path)
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=s3_endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )
        target = (
            await client.get(
                httpx.URL(manifest["launchAsset"]["url"]).raw_path.decode(), headers={"Accept-Encoding": "identity"}
            )
        ).headers["location"]
        bucket, key = httpx.URL(target).path.lstrip("/").split("/", 1)
        assert key.startswith("blobs/served/")
        for listed in s3.list_objects_v2(Bucket=bucket, Prefix="blobs/served/")["Contents"]:
            s3.delete_object(Bucket=bucket, Key=listed["Key"])
        ctx.extras.pop("updates_asset_cache", None)  # as a restarted server: nothing cached
        again = await client.get(
            httpx.URL(manifest["launchAsset"]["url"]).raw_path.decode(), headers={"Accept-Encoding": "identity"}
        )
        assert again.headers["location"] == target
        async with httpx.AsyncClient(timeout=10) as outside:
            got = await outside.get(target)
        assert got.status_code == 200
        assert got.headers["content-type"] == manifest["launchAsset"]["contentType"]
        assert b64url_sha256(got.content) == manifest["launchAsset"]["hash"]


async def test_redirect_can_be_turned_off(s3_endpoint: str, tmp_path: Path) -> None:
    async for client, project, _ctx in s3_client(tmp_path, s3_endpoint, s3_presign=True, updates_asset_redirect=False):
        manifest = await _manifest(client, project, tmp_path)
        got = await client.get(httpx.URL(manifest["launchAsset"]["url"]).raw_path.decode())
        assert got.status_code == 200 and b64url_sha256(got.content) == manifest["launchAsset"]["hash"]
