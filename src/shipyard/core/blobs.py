"""Content-addressed, immutable blob storage: a local directory or S3-compatible storage.

A blob's key is the SHA-256 hex digest of its bytes, so storing the same bytes twice is
a no-op and a key can never point at different content (safe to cache forever).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol

from shipyard.core.context import Context
from shipyard.settings import ConfigError, Settings

_KEY = re.compile(r"^[0-9a-f]{64}$")
_SERVED_NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}(\.[a-z0-9]{1,10})?$")


class BlobNotFound(KeyError):
    pass


def valid_key(key: str) -> bool:
    """Keys are SHA-256 hex only: nothing a client sends can reach the filesystem otherwise."""
    return bool(_KEY.match(key))


def blob_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore(Protocol):
    async def put(self, data: bytes) -> str: ...
    async def get(self, key: str) -> bytes: ...
    async def exists(self, key: str) -> bool: ...
    def public_url(self, key: str, response_headers: dict[str, str] | None = None) -> str | None: ...
    def local_path(self, key: str) -> Path | None: ...
    @property
    def signs_response_headers(self) -> bool:
        """True when :meth:`public_url` URLs make the storage answer with the given headers."""
        ...

    async def check_writable(self) -> None: ...


class LocalBlobStore:
    """Blobs under ``<root>/ab/cd/<key>``, written atomically (temp file + rename)."""

    def __init__(self, root: Path, cdn_base_url: str = "") -> None:
        self.root = root
        self.cdn_base_url = cdn_base_url.rstrip("/")
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not valid_key(key):
            raise BlobNotFound(key)
        return self.root / key[:2] / key[2:4] / key

    def _write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def put(self, data: bytes) -> str:
        key = blob_key(data)
        await asyncio.to_thread(self._write, key, data)
        return key

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    async def exists(self, key: str) -> bool:
        return valid_key(key) and self._path(key).exists()

    def public_url(self, key: str, response_headers: dict[str, str] | None = None) -> str | None:
        return f"{self.cdn_base_url}/{key}" if self.cdn_base_url else None

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.exists() else None

    @property
    def signs_response_headers(self) -> bool:
        return False

    async def check_writable(self) -> None:
        probe = self.root / ".probe"
        await asyncio.to_thread(probe.write_bytes, b"ok")
        probe.unlink(missing_ok=True)


class S3BlobStore:
    """Blobs in an S3-compatible bucket (AWS, MinIO, R2, …) under ``blobs/<key>``.

    boto3 is synchronous; calls run in a worker thread so the event loop stays free.
    """

    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        kwargs: dict[str, Any] = {
            "region_name": settings.s3_region,
            "config": Config(signature_version="s3v4", retries={"max_attempts": 5}),
        }
        if settings.s3_endpoint_url:
            kwargs["endpoint_url"] = settings.s3_endpoint_url
        if settings.s3_access_key_id:
            kwargs["aws_access_key_id"] = settings.s3_access_key_id
            kwargs["aws_secret_access_key"] = settings.s3_secret_access_key
        self.client = boto3.client("s3", **kwargs)
        self.bucket = settings.s3_bucket
        self.presign = settings.s3_presign
        self.cdn_base_url = settings.cdn_base_url.rstrip("/")

    @staticmethod
    def _object(key: str) -> str:
        if not valid_key(key):
            raise BlobNotFound(key)
        return f"blobs/{key}"

    async def put(self, data: bytes) -> str:
        key = blob_key(data)
        if not await self.exists(key):
            await asyncio.to_thread(
                self.client.put_object,
                Bucket=self.bucket,
                Key=self._object(key),
                Body=data,
                ChecksumSHA256=_b64_sha256(data),
            )
        return key

    async def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            response = await asyncio.to_thread(self.client.get_object, Bucket=self.bucket, Key=self._object(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise BlobNotFound(key) from None
            raise
        return await asyncio.to_thread(response["Body"].read)

    async def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        if not valid_key(key):
            return False
        try:
            await asyncio.to_thread(self.client.head_object, Bucket=self.bucket, Key=self._object(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise
        return True

    def public_url(self, key: str, response_headers: dict[str, str] | None = None) -> str | None:
        """A CDN URL, or a presigned GET. ``response_headers`` (content-type, content-encoding,
        cache-control) are signed into a presigned URL as S3's ``response-*`` overrides, so
        the bucket answers with them; a CDN URL cannot carry them (the CDN decides)."""
        if self.cdn_base_url:
            return f"{self.cdn_base_url}/{self._object(key)}"
        if self.presign:
            params = {"Bucket": self.bucket, "Key": self._object(key)}
            for name, value in (response_headers or {}).items():
                override = _RESPONSE_OVERRIDES.get(name.lower())
                if override:
                    params[override] = value
            return str(self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=3600))
        return None

    def local_path(self, key: str) -> Path | None:
        return None

    # A CDN or public bucket serves an object with the metadata it was stored with, and a
    # content-addressed blob has none (the same bytes may even be served as two types). A
    # served copy is the bytes stored once more under a feature-chosen name with their HTTP
    # headers; it lives under blobs/ so a bucket policy that exposes the blobs exposes it.
    @staticmethod
    def _served(name: str) -> str:
        if not _SERVED_NAME.match(name):
            raise ValueError(f"invalid served-object name {name[:40]!r}")
        return f"blobs/served/{name}"

    async def put_served_copy(self, name: str, data: bytes, headers: dict[str, str]) -> None:
        """Store ``data`` as ``blobs/served/<name>`` with HTTP metadata (content-type,
        content-encoding, cache-control) that S3, and a CDN in front of it, answer with."""
        extra: dict[str, Any] = {}
        for header, value in headers.items():
            param = _PUT_METADATA.get(header.lower())
            if param:
                extra[param] = value
        await asyncio.to_thread(
            self.client.put_object,
            Bucket=self.bucket,
            Key=self._served(name),
            Body=data,
            ChecksumSHA256=_b64_sha256(data),
            **extra,
        )

    async def has_served_copy(self, name: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            await asyncio.to_thread(self.client.head_object, Bucket=self.bucket, Key=self._served(name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise
        return True

    def served_copy_url(self, name: str) -> str | None:
        """The CDN (or public bucket) URL of a served copy; None without a CDN base URL."""
        return f"{self.cdn_base_url}/{self._served(name)}" if self.cdn_base_url else None

    @property
    def signs_response_headers(self) -> bool:
        return self.presign and not self.cdn_base_url

    async def check_writable(self) -> None:
        await asyncio.to_thread(self.client.head_bucket, Bucket=self.bucket)


_RESPONSE_OVERRIDES = {
    "content-type": "ResponseContentType",
    "content-encoding": "ResponseContentEncoding",
    "cache-control": "ResponseCacheControl",
    "content-disposition": "ResponseContentDisposition",
}


_PUT_METADATA = {
    "content-type": "ContentType",
    "content-encoding": "ContentEncoding",
    "cache-control": "CacheControl",
}


def _b64_sha256(data: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def make_blob_store(settings: Settings) -> BlobStore:
    if settings.blob_backend == "s3":
        if not settings.s3_bucket:
            raise ConfigError("SHIPYARD_S3_BUCKET is required when SHIPYARD_BLOB_BACKEND=s3")
        return S3BlobStore(settings)
    return LocalBlobStore(settings.resolved_data_dir / "blobs", settings.cdn_base_url)


def blob_store(ctx: Context) -> BlobStore:
    """The process's blob store, created on first use."""
    store = ctx.extras.get("blob_store")
    if store is None:
        store = ctx.extras["blob_store"] = make_blob_store(ctx.settings)
    return store
