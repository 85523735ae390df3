"""`shipyard backup create|list|restore`: create data, back up, destroy, restore, find the data."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from shipyard.cli import main
from shipyard.core.blobs import LocalBlobStore
from tests.conftest import LiveServer


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shipyard.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_online_sqlite_backup_survives_losing_the_data(live_server: LiveServer) -> None:
    env = live_server.env
    data = live_server.data_dir
    made = cli(env, "projects", "create", "Backed Up", "--json")
    assert made.returncode == 0, made.stderr
    project = json.loads(made.stdout)
    blob = b"bundle bytes " * 100
    key = asyncio.run(LocalBlobStore(data / "blobs").put(blob))

    # Backed up while the server is running and answering.
    created = cli(env, "backup", "create", "--json")
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    assert info["database"] == "sqlite" and info["blobs"] >= 1
    listed = json.loads(cli(env, "backup", "list", "--json").stdout)
    assert [b["name"] for b in listed] == [info["name"]]

    live_server.stop()
    for path in data.glob("shipyard.db*"):
        path.unlink()
    shutil.rmtree(data / "blobs")

    restored = cli(env, "backup", "restore", info["name"], "--yes")
    assert restored.returncode == 0, restored.stderr
    assert "warning" not in restored.stderr
    assert LocalBlobStore(data / "blobs").local_path(key).read_bytes() == blob  # type: ignore[union-attr]
    assert cli(env, "audit", "verify").returncode == 0

    live_server.start()
    got = httpx.get(
        live_server.url + "/api/v1/projects",
        headers={"Authorization": f"Bearer {project['secret_key']}"},
        timeout=10,
    )
    assert got.status_code == 200 and got.json()["data"][0]["slug"] == "backed-up"


def test_generated_secret_travels_with_the_backup_and_retention_prunes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("SHIPYARD_DATA_DIR", str(data))
    monkeypatch.setenv("SHIPYARD_BACKUP_RETENTION", "2")
    monkeypatch.delenv("SHIPYARD_DATABASE_URL", raising=False)
    monkeypatch.delenv("SHIPYARD_SECRET_KEY", raising=False)
    runner = CliRunner()
    assert runner.invoke(main, ["init", "--json"]).exit_code == 0
    names = []
    for _ in range(3):
        result = runner.invoke(main, ["backup", "create", "--json"])
        assert result.exit_code == 0, result.output
        names.append(json.loads(result.output)["name"])
    kept = [b["name"] for b in json.loads(runner.invoke(main, ["backup", "list", "--json"]).output)]
    assert kept == names[1:]

    # A new machine: only the backup directory survives.
    saved = tmp_path / "saved"
    shutil.copytree(data / "backups" / names[-1], saved)
    shutil.rmtree(data)
    restored = runner.invoke(main, ["backup", "restore", str(saved), "--yes"])
    assert restored.exit_code == 0, restored.output
    verify = runner.invoke(main, ["audit", "verify"])
    assert verify.exit_code == 0 and "intact" in verify.output
    projects = json.loads(runner.invoke(main, ["projects", "list", "--json"]).output)
    assert [p["slug"] for p in projects] == ["my-app"]
    assert (data / "secret.key").stat().st_mode & 0o777 == 0o600


def test_unknown_backup_and_wrong_database_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("SHIPYARD_DATABASE_URL", raising=False)
    runner = CliRunner()
    result = runner.invoke(main, ["backup", "restore", "nope", "--yes"])
    assert result.exit_code == 1 and "no backup named nope" in result.output


async def test_postgresql_backup_survives_a_dropped_schema(tmp_path: Path, pg_url: str) -> None:
    import asyncpg

    data = tmp_path / "data"
    env: dict[str, Any] = {
        **os.environ,
        "SHIPYARD_DATA_DIR": str(data),
        "SHIPYARD_DATABASE_URL": pg_url,
        "SHIPYARD_SECRET_KEY": "pg-backup-secret-0123456789",
    }
    init = cli(env, "init", "--json")
    assert init.returncode == 0, init.stderr
    made = json.loads(cli(env, "projects", "create", "On Postgres", "--json").stdout)
    key = await LocalBlobStore(data / "blobs").put(b"asset")

    created = cli(env, "backup", "create", "--json")
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    assert info["database"] == "postgresql" and (Path(info["path"]) / "shipyard.pgdump").stat().st_size > 0

    conn = await asyncpg.connect(pg_url.replace("postgresql://", "postgres://", 1))
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()
    shutil.rmtree(data / "blobs")

    restored = cli(env, "backup", "restore", info["name"], "--yes")
    assert restored.returncode == 0, restored.stderr
    projects = json.loads(cli(env, "projects", "list", "--json").stdout)
    assert {p["slug"] for p in projects} == {"my-app", made["slug"]}
    assert cli(env, "audit", "verify").returncode == 0
    assert (data / "blobs" / key[:2] / key[2:4] / key).read_bytes() == b"asset"
