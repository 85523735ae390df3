"""Backups of the database and the local blob store, kept in ``<data_dir>/backups``.

A backup is a directory ``shipyard-<UTC time>`` holding ``manifest.json``, the database
(``shipyard.db`` made with SQLite's online backup API, or ``shipyard.pgdump`` made with
``pg_dump --format=custom``), the local blob store under ``blobs/`` and, when the server
secret is the one generated into the data dir, that ``secret.key`` (without it stored
secrets cannot be decrypted and the audit chain cannot be verified).

Consistency: the database is copied first, as one snapshot taken while the server runs;
blobs are written before the rows that reference them and never change, so every blob
the snapshot refers to already exists when the blob store is copied afterwards. A backup
is assembled under a temporary name and renamed when complete, so ``list`` never shows a
half-written one. ``restore`` writes the database back (SQLite through the backup API, so
it is safe even with a server running; PostgreSQL with ``pg_restore --clean`` in a single
transaction) and copies back every blob the store is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from shipyard.core.crypto import derive_key
from shipyard.settings import Settings

FORMAT = 1
PREFIX = "shipyard-"


class BackupError(Exception):
    """A backup or restore that cannot proceed; the message says why."""


@dataclass
class BackupInfo:
    name: str
    path: Path
    created_at: str
    database: str
    size_bytes: int
    blobs: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "created_at": self.created_at,
            "database": self.database,
            "size_bytes": self.size_bytes,
            "blobs": self.blobs,
        }


def backups_dir(settings: Settings) -> Path:
    return settings.resolved_data_dir / "backups"


def sqlite_path(url: str) -> Path:
    for prefix in ("sqlite+aiosqlite:///", "sqlite:///"):
        if url.startswith(prefix):
            return Path(url.removeprefix(prefix).split("?", 1)[0])
    raise BackupError(f"not a SQLite URL: {url}")


def _pg_target(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL without the password, and an environment carrying it (not in `ps`)."""
    parsed = make_url(url).set(drivername="postgresql")
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    return parsed.set(password=None).render_as_string(hide_password=False), env


def _secret_fingerprint(settings: Settings) -> str:
    return derive_key(settings.resolved_secret_key, "backup-fingerprint").hex()[:16]


def _run(args: list[str], env: dict[str, str]) -> None:
    if shutil.which(args[0]) is None:
        raise BackupError(f"`{args[0]}` is not installed (Debian: apt-get install postgresql-client)")
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BackupError(f"{args[0]} failed: {done.stderr.strip()[-2000:]}")


def _blob_root(settings: Settings) -> Path | None:
    return settings.resolved_data_dir / "blobs" if settings.blob_backend == "local" else None


def _copy_blobs(src: Path, dst: Path) -> int:
    """Copy every blob file missing in ``dst``; returns how many blobs ``src`` holds."""
    count = 0
    if not src.is_dir():
        return 0
    for path in src.rglob("*"):
        if not path.is_file() or path.name.startswith(".tmp-"):
            continue
        count += 1
        target = dst / path.relative_to(src)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(".tmp-" + target.name)
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)
    return count


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def create_backup(settings: Settings) -> BackupInfo:
    """Make a consistent backup now, then prune the oldest beyond ``backup_retention``."""
    root = backups_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    name = PREFIX + now.strftime("%Y%m%dT%H%M%S%fZ")
    work = root / (".tmp-" + name)
    work.mkdir()
    try:
        url = settings.resolved_database_url
        if settings.is_sqlite:
            database = "sqlite"
            db_file = "shipyard.db"
            source_path = sqlite_path(url)
            if not source_path.exists():
                raise BackupError(f"no database at {source_path} (run `shipyard migrate` first)")
            source = sqlite3.connect(source_path)
            target = sqlite3.connect(work / db_file)
            try:
                source.backup(target)
            finally:
                target.close()
                source.close()
        else:
            database = "postgresql"
            db_file = "shipyard.pgdump"
            target_url, env = _pg_target(url)
            _run(["pg_dump", "--format=custom", "--no-owner", "--file", str(work / db_file), target_url], env)
        blob_root = _blob_root(settings)
        blobs = _copy_blobs(blob_root, work / "blobs") if blob_root else 0
        includes_secret = False
        if not settings.secret_key:
            key_file = settings.resolved_data_dir / "secret.key"
            if key_file.exists():
                shutil.copyfile(key_file, work / "secret.key")
                os.chmod(work / "secret.key", 0o600)
                includes_secret = True
        manifest = {
            "format": FORMAT,
            "created_at": now.isoformat(),
            "database": database,
            "database_file": db_file,
            "blob_backend": settings.blob_backend,
            "blobs": blobs,
            "includes_secret_key": includes_secret,
            "secret_fingerprint": _secret_fingerprint(settings),
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
        os.replace(work, root / name)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    prune(settings)
    return _info(root / name)


def _info(path: Path) -> BackupInfo:
    manifest = json.loads((path / "manifest.json").read_text())
    return BackupInfo(
        name=path.name,
        path=path,
        created_at=manifest["created_at"],
        database=manifest["database"],
        size_bytes=_size(path),
        blobs=manifest.get("blobs", 0),
    )


def list_backups(settings: Settings) -> list[BackupInfo]:
    """Complete backups, oldest first."""
    root = backups_dir(settings)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "manifest.json").exists()]
    return [_info(p) for p in sorted(found, key=lambda p: p.name)]


def prune(settings: Settings) -> list[str]:
    """Delete the oldest backups beyond the retention count; returns their names."""
    keep = max(settings.backup_retention, 1)
    existing = list_backups(settings)
    removed = []
    for info in existing[: max(len(existing) - keep, 0)]:
        shutil.rmtree(info.path)
        removed.append(info.name)
    return removed


def resolve(settings: Settings, name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if not (candidate / "manifest.json").exists():
        candidate = backups_dir(settings) / name_or_path
    if not (candidate / "manifest.json").exists():
        raise BackupError(f"no backup named {name_or_path} (see `shipyard backup list`)")
    return candidate


def restore_backup(settings: Settings, name_or_path: str) -> dict[str, Any]:
    """Bring the database, the local blobs and a generated secret key back from a backup."""
    path = resolve(settings, name_or_path)
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest.get("format") != FORMAT:
        raise BackupError(f"unsupported backup format {manifest.get('format')}")
    wanted = "sqlite" if settings.is_sqlite else "postgresql"
    if manifest["database"] != wanted:
        raise BackupError(
            f"backup holds a {manifest['database']} database but SHIPYARD_DATABASE_URL points at {wanted}"
        )
    warnings: list[str] = []
    # The secret first: everything encrypted or chained in the database depends on it.
    if manifest.get("includes_secret_key") and not settings.secret_key:
        key_file = settings.resolved_data_dir / "secret.key"
        tmp = key_file.with_name(".tmp-secret.key")
        shutil.copyfile(path / "secret.key", tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, key_file)
        settings.__dict__.pop("resolved_secret_key", None)
    if manifest.get("secret_fingerprint") != _secret_fingerprint(settings):
        warnings.append(
            "the server secret differs from the one the backup was made with: stored secrets will not "
            "decrypt and `shipyard audit verify` will fail until SHIPYARD_SECRET_KEY (or "
            "SHIPYARD_PREVIOUS_SECRET_KEYS) includes the old secret"
        )
    url = settings.resolved_database_url
    db_file = path / manifest["database_file"]
    if wanted == "sqlite":
        target_path = sqlite_path(url)
        target_path.parent.mkdir(parents=True, exist_ok=True)
        source = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
        target = sqlite3.connect(target_path, timeout=30)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
    else:
        target_url, env = _pg_target(url)
        _run(
            [
                "pg_restore",
                "--clean",
                "--if-exists",
                "--no-owner",
                "--single-transaction",
                "--exit-on-error",
                "--dbname",
                target_url,
                str(db_file),
            ],
            env,
        )
    blob_root = _blob_root(settings)
    restored_blobs = 0
    if blob_root is not None and (path / "blobs").is_dir():
        restored_blobs = _copy_blobs(path / "blobs", blob_root)
    elif manifest.get("blobs") and blob_root is None:
        warnings.append("the backup holds local blobs but the blob backend is now s3; they were not copied")
    return {"restored": path.name, "database": wanted, "blobs": restored_blobs, "warnings": warnings}
