"""Rollout bucketing properties: stable, monotonic when raising, fair within ±2 %."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from shipyard.updates.bucketing import bucket, in_rollout

client_ids = st.uuids().map(str)
salts = st.text(alphabet="0123456789abcdef", min_size=8, max_size=32)
percentages = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)


@given(salt=salts, client=client_ids, pct=percentages)
def test_same_device_same_answer(salt: str, client: str, pct: float) -> None:
    assert in_rollout(salt, client, pct) == in_rollout(salt, client, pct)
    assert 0.0 <= bucket(salt, client) < 1.0


@given(salt=salts, client=client_ids, low=percentages, high=percentages)
def test_raising_never_drops_a_device(salt: str, client: str, low: float, high: float) -> None:
    low, high = min(low, high), max(low, high)
    if in_rollout(salt, client, low):
        assert in_rollout(salt, client, high)


@given(salt=salts, pct=percentages)
def test_no_client_id_gets_control(salt: str, pct: float) -> None:
    assert in_rollout(salt, None, pct) is False


def test_edges() -> None:
    assert in_rollout("s", "device", 100.0) is True
    assert in_rollout("s", "device", 0.0) is False


@settings(max_examples=5, deadline=None)
@given(salt=salts, pct=st.sampled_from([1.0, 10.0, 25.0, 50.0, 90.0]))
def test_share_within_two_points_over_100k_ids(salt: str, pct: float) -> None:
    ids = [str(uuid.UUID(int=(i * 0x9E3779B97F4A7C15) % (1 << 128))) for i in range(100_000)]
    share = sum(in_rollout(salt, i, pct) for i in ids) / len(ids) * 100
    assert abs(share - pct) <= 2.0


def test_salts_pick_different_devices() -> None:
    ids = [str(uuid.uuid4()) for _ in range(5000)]
    first = {i for i in ids if in_rollout("rollout-a", i, 10)}
    second = {i for i in ids if in_rollout("rollout-b", i, 10)}
    assert len(first & second) < len(first) / 2
