"""Test helpers: a realistic `npx expo export` output, requests exactly as expo-updates
sends them, and an independent multipart/mixed parser."""

from __future__ import annotations

import hashlib
import json
import random
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from python_multipart.multipart import MultipartParser

from shipyard.updates.export import read_export

PROJECT_UUID = "5b7e1b2c-3f4d-4e5a-9b6c-7d8e9f0a1b2c"


def _png(width: int, height: int, seed: int) -> bytes:
    rng = random.Random(seed)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(rng.randrange(256) for _ in range(width * 3)) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _bundle(platform: str, label: str) -> bytes:
    # Hermes bytecode starts with its magic number; the rest is compressible, like real .hbc.
    body = "".join(
        f'__d(function(g,r,i,a,m,e,d){{"use strict";m.exports="{label}:{platform}:{n}"}},{n},[]);\n' for n in range(400)
    )
    return b"\xc6\x1f\xbc\x03\xc1\x03\x19\x1f" + body.encode()


def make_export(
    root: Path,
    label: str = "v1",
    *,
    version: str = "1.0.0",
    runtime_policy: Any = None,
    shared_asset_seed: int = 7,
    platforms: tuple[str, ...] = ("ios", "android"),
) -> Path:
    """Write a dist/ folder as `npx expo export` does (Hermes bundles, assets by md5)."""
    dist = root / f"dist-{label}"
    (dist / "assets").mkdir(parents=True, exist_ok=True)
    file_metadata: dict[str, Any] = {}
    shared = _png(8, 8, shared_asset_seed)  # the same icon in every export: deduplicated
    specific = _png(4, 4, hash(label) & 0xFFFF)
    font = bytes(random.Random(label).randrange(256) for _ in range(3000))
    asset_paths = []
    for data, ext in ((shared, "png"), (specific, "png"), (font, "ttf")):
        md5 = hashlib.md5(data).hexdigest()
        (dist / "assets" / md5).write_bytes(data)
        asset_paths.append({"path": f"assets/{md5}", "ext": ext})
    for platform in platforms:
        bundle = _bundle(platform, label)
        name = f"_expo/static/js/{platform}/entry-{hashlib.md5(bundle).hexdigest()}.hbc"
        (dist / name).parent.mkdir(parents=True, exist_ok=True)
        (dist / name).write_bytes(bundle)
        file_metadata[platform] = {"bundle": name, "assets": asset_paths}
    (dist / "metadata.json").write_text(json.dumps({"version": 0, "bundler": "metro", "fileMetadata": file_metadata}))
    config = {
        "name": "CanaBro",
        "slug": "canabro",
        "version": version,
        "runtimeVersion": runtime_policy if runtime_policy is not None else {"policy": "appVersion"},
        "ios": {"bundleIdentifier": "com.canabro.app", "buildNumber": "12"},
        "android": {"package": "com.canabro.app", "versionCode": 12},
        "updates": {"url": "https://example.invalid/updates/1/manifest"},
        "extra": {"eas": {"projectId": PROJECT_UUID}},
    }
    (dist / "expoConfig.json").write_text(json.dumps(config))
    return dist


async def publish_export(
    client: httpx.AsyncClient,
    project: dict[str, Any],
    dist: Path,
    *,
    channel: str | None = "production",
    expect: int = 201,
    **fields: Any,
) -> dict[str, Any]:
    """What `shipyard updates publish` does, through the in-process client."""
    headers = {"Authorization": f"Bearer {project['secret_key']}"}
    base = f"/api/v1/projects/{project['id']}/updates"
    export = read_export(dist, runtime_version_flag=fields.pop("runtime_version", None))
    missing = await client.post(f"{base}/assets/missing", json={"blobs": sorted(export.files)}, headers=headers)
    assert missing.status_code == 200, missing.text
    for digest in missing.json()["missing"]:
        put = await client.put(
            f"{base}/blobs/{digest}", content=export.files[digest].path.read_bytes(), headers=headers
        )
        assert put.status_code == 200, put.text
    body = {"channel": channel, "platforms": export.platforms, "expo_config": export.expo_config, **fields}
    response = await client.post(f"{base}/publish", json=body, headers=headers)
    assert response.status_code == expect, response.text
    return dict(response.json())


def expo_headers(
    platform: str = "ios",
    runtime: str = "1.0.0",
    *,
    channel: str | None = "production",
    client_id: str | None = None,
    current: str | None = None,
    embedded: str | None = None,
    failed: list[str] | None = None,
    fatal: str | None = None,
    protocol: int | None = 1,
    keyid: str | None = None,
    accept: str = "multipart/mixed,application/expo+json,application/json",
) -> dict[str, str]:
    """The headers expo-updates' FileDownloader sends (Android), plus configured requestHeaders."""
    headers = {
        "Accept": accept,
        "Expo-Platform": platform,
        "Expo-API-Version": "1",
        "Expo-Updates-Environment": "BARE",
        "Expo-JSON-Error": "true",
        "EAS-Client-ID": client_id or str(uuid.uuid4()),
        "Expo-Runtime-Version": runtime,
    }
    if protocol is not None:
        headers["Expo-Protocol-Version"] = str(protocol)
    if channel is not None:
        headers["expo-channel-name"] = channel
    if embedded is not None:
        headers["Expo-Embedded-Update-ID"] = embedded
    if current is not None:
        headers["Expo-Current-Update-ID"] = current
    if failed:
        headers["Expo-Recent-Failed-Update-IDs"] = ", ".join(f'"{f}"' for f in failed)
    if fatal is not None:
        headers["Expo-Fatal-Error"] = fatal
    if keyid is not None:
        headers["expo-expect-signature"] = f'sig, keyid="{keyid}", alg="rsa-v1_5-sha256"'
    return headers


@dataclass
class PartOut:
    headers: dict[str, str]
    body: bytes

    @property
    def name(self) -> str:
        disposition = self.headers.get("content-disposition", "")
        for piece in disposition.split(";"):
            key, _, value = piece.strip().partition("=")
            if key == "name":
                return value.strip('"')
        return ""


def parse_multipart(response: httpx.Response) -> dict[str, PartOut]:
    """Split a multipart/mixed body with python-multipart (not our own code)."""
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/mixed"), content_type
    boundary = content_type.split("boundary=")[1].strip().strip('"')
    parts: list[PartOut] = []
    state: dict[str, Any] = {}

    def on_part_begin() -> None:
        state["headers"], state["data"] = {}, bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] = state.get("field", b"") + data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] = state.get("value", b"") + data[start:end]

    def on_header_end() -> None:
        state["headers"][state.pop("field").decode().lower()] = state.pop("value", b"").decode()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"] += data[start:end]

    def on_part_end() -> None:
        parts.append(PartOut(state["headers"], bytes(state["data"])))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    parser.write(response.content)
    parser.finalize()
    return {p.name: p for p in parts}
