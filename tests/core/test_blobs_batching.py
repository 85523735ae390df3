"""Blob storage (local and S3-compatible) and group commit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, String, Table, func, select

from shipyard.core.batching import GroupCommitter
from shipyard.core.blobs import BlobNotFound, LocalBlobStore, S3BlobStore, blob_key
from shipyard.core.db import metadata
from tests.conftest import make_settings


async def _exercise(store: Any) -> None:
    key = await store.put(b"hello bundle")
    assert key == blob_key(b"hello bundle")
    assert await store.put(b"hello bundle") == key  # idempotent
    assert await store.get(key) == b"hello bundle"
    assert await store.exists(key)
    assert not await store.exists("0" * 64)
    for bad in ("../../etc/passwd", "..", "a" * 63, "G" * 64):
        assert not await store.exists(bad)
        with pytest.raises(BlobNotFound):
            await store.get(bad)


async def test_local_blob_store(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    await _exercise(store)
    await store.check_writable()


def test_s3_blob_store_against_moto(tmp_path: Path) -> None:
    from moto.server import ThreadedMotoServer

    from tests.conftest import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        settings = make_settings(
            tmp_path,
            blob_backend="s3",
            s3_endpoint_url=f"http://127.0.0.1:{port}",
            s3_bucket="assets",
            s3_access_key_id="test",
            s3_secret_access_key="test",
            s3_presign=True,
        )
        store = S3BlobStore(settings)
        store.client.create_bucket(Bucket="assets")

        async def go() -> None:
            await _exercise(store)
            await store.check_writable()
            url = store.public_url(blob_key(b"hello bundle"))
            assert url and "X-Amz-Signature" in url

        asyncio.run(go())
    finally:
        server.stop()


_probe = Table(
    "test_group_commit_probe",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), unique=True),
)


async def test_group_commit_commits_before_answering_and_isolates_bad_items(ctx: Any) -> None:
    async with ctx.db.transaction() as conn:
        await conn.run_sync(lambda sync: _probe.create(sync, checkfirst=True))
    committer = GroupCommitter(ctx.db, max_batch=50)
    results = await asyncio.gather(
        *(committer.insert(_probe, {"name": f"n{i}"}) for i in range(200)),
        committer.insert(_probe, {"name": "n5"}),  # duplicate: fails alone
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(failures) == 1
    async with ctx.db.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(_probe))).scalar_one() == 200
    await committer.insert(_probe, [{"name": "n5"}, {"name": "x"}], ignore_conflicts_on=["name"])
    async with ctx.db.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(_probe))).scalar_one() == 201
    await committer.close()
    metadata.remove(_probe)


async def test_merged_work_is_written_once_per_group_and_each_caller_gets_its_result(ctx: Any) -> None:
    calls: list[list[int]] = []

    async def write(_conn: Any, payloads: list[int]) -> list[int]:
        calls.append(payloads)
        if 13 in payloads:
            raise ValueError("unlucky")
        return [p * 10 for p in payloads]

    committer = GroupCommitter(ctx.db, max_batch=50)
    results = await asyncio.gather(*(committer.run_merged(write, p) for p in range(20)), return_exceptions=True)
    assert [r for r in results if isinstance(r, Exception)] == [results[13]]
    assert [r for i, r in enumerate(results) if i != 13] == [i * 10 for i in range(20) if i != 13]
    # Concurrent callers shared a call; after the failure, 13 was retried alone.
    assert any(len(payloads) > 1 for payloads in calls)
    assert [13] in calls
    await committer.close()


@pytest.mark.parametrize("parallel", [1, 3])
async def test_postgres_keeps_up_to_parallel_groups_in_flight(pg_ctx: Any, parallel: int) -> None:
    """While one group's transaction is open, the next is written on another connection —
    never more than ``parallel`` at once — and every caller still gets its own result."""
    open_now, most = 0, 0
    gate = asyncio.Event()

    async def write(conn: Any, payloads: list[int]) -> list[int]:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        await conn.exec_driver_sql("SELECT 1")  # a real statement inside the transaction
        await asyncio.wait_for(gate.wait(), timeout=5)
        open_now -= 1
        return [p + 1 for p in payloads]

    committer = GroupCommitter(pg_ctx.db, max_batch=50, parallel=parallel)
    pending = []
    for p in range(10):  # callers arriving one after another, as requests do
        pending.append(asyncio.create_task(committer.run_merged(write, p)))
        await asyncio.sleep(0.02)
    gate.set()
    assert await asyncio.gather(*pending) == [p + 1 for p in range(10)]
    assert most == parallel
    await committer.close()


async def test_sqlite_writes_one_group_at_a_time_whatever_is_asked(ctx: Any) -> None:
    open_now, most = 0, 0

    async def write(_conn: Any, payloads: list[int]) -> list[int]:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        await asyncio.sleep(0.02)
        open_now -= 1
        return payloads

    committer = GroupCommitter(ctx.db, max_batch=2, parallel=3)
    assert await asyncio.gather(*(committer.run_merged(write, p) for p in range(8))) == list(range(8))
    assert most == 1
    await committer.close()
