"""The audit chain detects modified, deleted, inserted and reordered records."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from shipyard.core import audit
from shipyard.core.models import audit_log


async def _write(ctx: Any, n: int = 5) -> None:
    actor = audit.Actor("user", "1", ip="10.0.0.1", user_agent="pytest", label="a@example.com")
    for i in range(n):
        async with ctx.db.transaction() as conn:
            await audit.record(
                conn,
                ctx,
                actor,
                "thing.update",
                project_id=1,
                resource_type="thing",
                resource_id=i,
                details={"i": i, "password": "hunter2", "token": "t"},
            )


async def test_intact_chain_verifies(ctx: Any) -> None:
    await _write(ctx)
    await audit.checkpoint(ctx)
    result = await audit.verify(ctx)
    assert result.ok and result.records == 5 and result.checkpoints_checked == 1


async def test_secrets_never_reach_the_audit_log(ctx: Any) -> None:
    await _write(ctx, 1)
    async with ctx.db.connect() as conn:
        details = (await conn.execute(audit_log.select())).first().details
    assert details["password"] == "[redacted]" and details["token"] == "[redacted]"


async def test_modified_record_is_named(ctx: Any) -> None:
    await _write(ctx)
    async with ctx.db.transaction() as conn:
        await conn.execute(update(audit_log).where(audit_log.c.seq == 3).values(action="thing.delete"))
    result = await audit.verify(ctx)
    assert not result.ok and result.first_bad_seq == 3 and "modified" in (result.problem or "")


async def test_deleted_record_is_named(ctx: Any) -> None:
    await _write(ctx)
    async with ctx.db.transaction() as conn:
        await conn.execute(audit_log.delete().where(audit_log.c.seq == 2))
    result = await audit.verify(ctx)
    assert not result.ok and result.first_bad_seq == 3 and "deleted" in (result.problem or "")


async def test_reordered_records_are_named(ctx: Any) -> None:
    await _write(ctx)
    async with ctx.db.transaction() as conn:
        await conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(seq=-2))
        await conn.execute(update(audit_log).where(audit_log.c.seq == 3).values(seq=2))
        await conn.execute(update(audit_log).where(audit_log.c.seq == -2).values(seq=3))
    result = await audit.verify(ctx)
    assert not result.ok and result.first_bad_seq in (2, 3)


async def test_truncated_tail_is_caught_by_checkpoint(ctx: Any) -> None:
    await _write(ctx)
    await audit.checkpoint(ctx)
    async with ctx.db.transaction() as conn:
        await conn.execute(audit_log.delete().where(audit_log.c.seq >= 4))
    result = await audit.verify(ctx)
    assert not result.ok and "checkpoint" in (result.problem or "")
