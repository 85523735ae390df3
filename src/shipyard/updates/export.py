"""Reading the output of ``npx expo export`` (the ``dist/`` folder) into a publish.

``dist/metadata.json`` lists, per platform, the launch bundle and the assets (stored flat
as ``assets/<md5>`` with the extension only in the metadata). The public app config comes
from ``dist/expoConfig.json`` (what ``expo config --type public --json`` prints) or an
``app.json`` in ``dist/`` or next to it; it supplies the runtime version when no flag does.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLATFORMS = ("ios", "android")


class ExportError(ValueError):
    pass


@dataclass(frozen=True)
class ExportFile:
    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class Export:
    files: dict[str, ExportFile]  # sha256 -> file
    platforms: dict[str, dict[str, Any]]  # the publish API's `platforms` payload
    expo_config: dict[str, Any] | None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_type_for(ext: str) -> str:
    guessed, _ = mimetypes.guess_type("file." + ext.lstrip("."))
    return guessed or "application/octet-stream"


def load_expo_config(dist: Path) -> dict[str, Any] | None:
    for candidate in (dist / "expoConfig.json", dist / "app.json", dist.parent / "app.json"):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except json.JSONDecodeError as exc:
                raise ExportError(f"{candidate} is not valid JSON: {exc}") from None
            if isinstance(data, dict) and isinstance(data.get("expo"), dict):
                data = data["expo"]
            if isinstance(data, dict):
                return data
    return None


def runtime_version(config: dict[str, Any] | None, platform: str) -> str:
    """Resolve the runtime version from the app config the way expo-updates does for the
    policies that need no native project (a fingerprint needs ``--runtime-version``)."""
    if config is None:
        raise ExportError("no app config found in the export; pass --runtime-version")
    value = (config.get(platform) or {}).get("runtimeVersion", config.get("runtimeVersion"))
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict):
        policy = value.get("policy")
        version = config.get("version")
        if policy == "appVersion" and version:
            return str(version)
        if policy == "nativeVersion" and version:
            build = (
                (config.get("ios") or {}).get("buildNumber")
                if platform == "ios"
                else (config.get("android") or {}).get("versionCode")
            )
            if build is not None:
                return f"{version}({build})"
        if policy == "sdkVersion" and config.get("sdkVersion"):
            return f"exposdk:{config['sdkVersion']}"
        raise ExportError(f"runtime version policy {policy!r} cannot be resolved here; pass --runtime-version")
    raise ExportError("the app config has no runtimeVersion; pass --runtime-version")


def read_export(dist: Path, *, runtime_version_flag: str | None = None, platforms: list[str] | None = None) -> Export:
    metadata_path = dist / "metadata.json"
    if not metadata_path.is_file():
        raise ExportError(f"{metadata_path} not found: is {dist} the output of `npx expo export`?")
    try:
        metadata = json.loads(metadata_path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"metadata.json is not valid JSON: {exc}") from None
    if metadata.get("version") != 0 or metadata.get("bundler") != "metro":
        raise ExportError("metadata.json must have version 0 and bundler 'metro' (an `expo export` output)")
    file_metadata = metadata.get("fileMetadata") or {}
    wanted = platforms or [p for p in PLATFORMS if p in file_metadata]
    if not wanted:
        raise ExportError("metadata.json lists no ios or android bundle (web-only exports cannot be published)")
    config = load_expo_config(dist)
    files: dict[str, ExportFile] = {}
    root = dist.resolve()

    def add(relative: str) -> str:
        path = (dist / relative).resolve()
        if not path.is_relative_to(root):
            raise ExportError(f"{relative!r} points outside the export directory")
        if not path.is_file():
            raise ExportError(f"{relative} is listed in metadata.json but missing")
        digest = _sha256(path)
        files[digest] = ExportFile(path, digest, path.stat().st_size)
        return digest

    payload: dict[str, dict[str, Any]] = {}
    for platform in wanted:
        entry = file_metadata.get(platform)
        if not isinstance(entry, dict) or not entry.get("bundle"):
            raise ExportError(f"metadata.json has no {platform} bundle")
        launch = add(entry["bundle"])
        asset_list = []
        for item in entry.get("assets") or []:
            ext = str(item.get("ext") or "")
            asset_list.append(
                {
                    "sha256": add(item["path"]),
                    "content_type": content_type_for(ext) if ext else "application/octet-stream",
                    "file_extension": f".{ext}" if ext else None,
                }
            )
        payload[platform] = {
            "runtime_version": runtime_version_flag or runtime_version(config, platform),
            "launch_asset": {"sha256": launch, "content_type": "application/javascript"},
            "assets": asset_list,
        }
    return Export(files, payload, config)
