"""Rotating the server secret: stored secrets are re-encrypted, the audit chain keeps
verifying with only the new secret configured, and no secret reaches the logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from shipyard.cli import main
from shipyard.core import alerts, audit, auth, projects, secrets
from shipyard.core.models import alert_channels, users
from tests.conftest import make_ctx, make_settings

OLD = "old-server-secret-" + "a" * 30
NEW = "new-server-secret-" + "b" * 30


async def test_rotation_reencrypts_everything_and_keeps_the_audit_chain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ctx = await make_ctx(make_settings(tmp_path, secret_key=OLD))
    actor = audit.Actor.system("test")
    async with ctx.db.transaction() as conn:
        project = await projects.create_project(conn, "Rotating", public_base="http://testserver")
        channel_id, webhook_secret = await alerts.create_webhook_channel(
            conn, ctx, project["id"], name="ops", url="http://127.0.0.1:9/hook"
        )
        user_id = await auth.create_user(conn, "ops@example.com", "a long enough password 1")
        await conn.execute(update(users).where(users.c.id == user_id).values(totp_secret=ctx.box.encrypt("TOTPSEED")))
        await audit.record(conn, ctx, actor, "project.create", project_id=project["id"])
    await audit.checkpoint(ctx)
    await ctx.close()

    # With only the new secret, nothing stored can be read yet.
    ctx = await make_ctx(make_settings(tmp_path, secret_key=NEW))
    async with ctx.db.connect() as conn:
        stored = (await conn.execute(select(alert_channels.c.secret))).scalar_one()
    with pytest.raises(ValueError, match="cannot be decrypted"):
        ctx.box.decrypt(stored)
    await ctx.close()

    ctx = await make_ctx(make_settings(tmp_path, secret_key=NEW, previous_secret_keys=[OLD]))
    report = await secrets.rotate_all(ctx)
    assert report.undecryptable == {}
    assert report.reencrypted["alert_channels.secret"] == 1 and report.reencrypted["users.totp_secret"] == 1
    assert report.reencrypted["server_keys.value"] == 2  # the audit MAC key and the checkpoint signing key
    await ctx.close()

    ctx = await make_ctx(make_settings(tmp_path, secret_key=NEW))
    try:
        async with ctx.db.connect() as conn:
            channel = (await conn.execute(select(alert_channels).where(alert_channels.c.id == channel_id))).one()
            totp = (await conn.execute(select(users.c.totp_secret).where(users.c.id == user_id))).scalar_one()
        assert ctx.box.decrypt(channel.secret) == webhook_secret and ctx.box.decrypt(totp) == "TOTPSEED"
        result = await audit.verify(ctx)
        assert result.ok and result.checkpoints_checked == 1, result.problem
        async with ctx.db.transaction() as conn:
            await audit.record(conn, ctx, actor, "after.rotation")
        await audit.checkpoint(ctx)
        result = await audit.verify(ctx)
        assert result.ok and result.records == 2 and result.checkpoints_checked == 2
    finally:
        await ctx.close()

    for secret in (OLD, NEW, webhook_secret, "TOTPSEED"):
        assert secret not in caplog.text


def test_cli_rotates_a_generated_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    data = tmp_path / "data"
    monkeypatch.setenv("SHIPYARD_DATA_DIR", str(data))
    monkeypatch.delenv("SHIPYARD_DATABASE_URL", raising=False)
    monkeypatch.delenv("SHIPYARD_SECRET_KEY", raising=False)
    runner = CliRunner()
    creds = json.loads(runner.invoke(main, ["init", "--json"]).output)
    assert runner.invoke(main, ["audit", "checkpoint"]).exit_code == 0
    old = (data / "secret.key").read_text()

    rotated = runner.invoke(main, ["secrets", "rotate", "--generate", "--json"])
    assert rotated.exit_code == 0, rotated.output
    assert json.loads(rotated.output)["reencrypted"]["server_keys.value"] == 2
    new = (data / "secret.key").read_text()
    assert new != old and not (data / "secret.key.next").exists()
    assert (data / "secret.key").stat().st_mode & 0o777 == 0o600

    verify = runner.invoke(main, ["audit", "verify"])
    assert verify.exit_code == 0 and "intact" in verify.output, verify.output
    for secret in (old, new, creds["admin_password"], creds["secret_key"]):
        assert secret not in rotated.output and secret not in caplog.text

    with_env = runner.invoke(main, ["secrets", "rotate", "--generate"], env={"SHIPYARD_SECRET_KEY": "x" * 40})
    assert with_env.exit_code == 2 and "SHIPYARD_SECRET_KEY is set" in with_env.output
