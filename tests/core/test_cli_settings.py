"""The CLI contract the issue names, and settings from env, config file and production mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from shipyard.cli import main
from shipyard.settings import Settings


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHIPYARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SHIPYARD_PUBLIC_URL", "https://ship.example.com")
    monkeypatch.delenv("SHIPYARD_DATABASE_URL", raising=False)
    return tmp_path


def test_init_then_projects_create_json(cli_env: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["init", "--json"])
    assert first.exit_code == 0, first.output
    creds = json.loads(first.output)
    assert len(creds["admin_password"]) >= 20 and creds["secret_key"].startswith("sk_")
    again = runner.invoke(main, ["init", "--json"])
    assert again.exit_code != 0 and "already initialised" in again.output

    result = runner.invoke(main, ["projects", "create", "CanaBro", "--json"])
    assert result.exit_code == 0, result.output
    project = json.loads(result.output)
    assert {"id", "slug", "public_key", "secret_key", "dsn", "write_key", "manifest_url"} <= project.keys()
    assert project["slug"] == "canabro"
    assert project["dsn"] == f"https://{project['public_key']}@ship.example.com/{project['id']}"
    assert project["manifest_url"] == f"https://ship.example.com/updates/{project['id']}/manifest"

    keys = json.loads(runner.invoke(main, ["keys", "list", "--project", "canabro", "--json"]).output)
    secret_id = next(k["id"] for k in keys if k["kind"] == "secret")
    rotated = runner.invoke(main, ["keys", "rotate", "--project", "canabro", "--key-id", str(secret_id), "--json"])
    assert rotated.exit_code == 0 and json.loads(rotated.output)["secret_key"].startswith("sk_")
    assert runner.invoke(main, ["keys", "revoke", "--project", "canabro", "--key-id", str(secret_id)]).exit_code == 0

    assert runner.invoke(main, ["users", "create", "dev@example.com"]).exit_code == 0
    set_role = runner.invoke(
        main, ["users", "set-role", "dev@example.com", "--project", "canabro", "--role", "developer"]
    )
    assert set_role.exit_code == 0, set_role.output
    verify = runner.invoke(main, ["audit", "verify"])
    assert verify.exit_code == 0 and "intact" in verify.output
    # No secret ever reaches the audit trail.
    db = (cli_env / "data" / "shipyard.db").read_bytes()
    assert project["secret_key"].encode() not in db and creds["admin_password"].encode() not in db


def test_settings_from_a_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "shipyard.toml"
    config.write_text('public_url = "https://from-file.example.com"\nport = 9001\n')
    monkeypatch.setenv("SHIPYARD_CONFIG", str(config))
    monkeypatch.setenv("SHIPYARD_PORT", "9002")  # the environment wins over the file
    settings = Settings()
    assert settings.public_url == "https://from-file.example.com" and settings.port == 9002


def test_production_mode_requires_a_secret_and_public_url(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        Settings(mode="production", data_dir=tmp_path).check_production()
    with pytest.raises(RuntimeError, match="PUBLIC_URL"):
        Settings(mode="production", data_dir=tmp_path, secret_key="x" * 40).check_production()
    Settings(
        mode="production", data_dir=tmp_path, secret_key="x" * 40, public_url="https://a.example"
    ).check_production()


def test_production_mode_without_a_secret_is_a_clear_cli_error(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SHIPYARD_MODE=production turns production mode on; every command then refuses to
    start without SHIPYARD_SECRET_KEY, with one line that says what to set, no traceback."""
    monkeypatch.setenv("SHIPYARD_MODE", "production")
    monkeypatch.delenv("SHIPYARD_SECRET_KEY", raising=False)
    runner = CliRunner()
    for command in (["serve"], ["worker"], ["migrate"], ["init", "--json"]):
        result = runner.invoke(main, command)
        assert result.exit_code == 2, (command, result.output)
        assert "SHIPYARD_SECRET_KEY is required when SHIPYARD_MODE=production" in result.output
        assert "Traceback" not in result.output
    assert not (cli_env / "data" / "secret.key").exists()  # nothing generated behind the user's back

    monkeypatch.setenv("SHIPYARD_MODE", "prod")
    result = runner.invoke(main, ["migrate"])
    assert result.exit_code == 2
    assert "SHIPYARD_MODE: Input should be 'development' or 'production' (got 'prod')" in result.output

    monkeypatch.setenv("SHIPYARD_MODE", "production")
    monkeypatch.setenv("SHIPYARD_SECRET_KEY", "s" * 48)
    assert runner.invoke(main, ["migrate"]).exit_code == 0


def test_development_secret_is_generated_once_and_private(tmp_path: Path) -> None:
    first = Settings(data_dir=tmp_path).resolved_secret_key
    assert first == Settings(data_dir=tmp_path).resolved_secret_key
    assert ((tmp_path / "secret.key").stat().st_mode & 0o777) == 0o600
