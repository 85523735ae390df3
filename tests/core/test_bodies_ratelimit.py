"""Compressed bodies are decoded with a hard size cap; rate limits answer with usable headers."""

from __future__ import annotations

import gzip
import os
import zlib

import brotli
import pytest
import zstandard

from shipyard.core.bodies import BadEncoding, BodyTooLarge, decode_body
from shipyard.core.errors import ApiError
from shipyard.core.ratelimit import RateLimited, RateLimiter

PAYLOAD = b'{"event": "plant_created"}' * 100

ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_each_encoding_round_trips(encoding: str) -> None:
    assert decode_body(ENCODERS[encoding](PAYLOAD), encoding, limit=10_000) == PAYLOAD


def test_raw_deflate_and_identity_are_accepted() -> None:
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    body = raw.compress(PAYLOAD) + raw.flush()
    assert decode_body(body, "deflate", limit=10_000) == PAYLOAD
    assert decode_body(PAYLOAD, None, limit=10_000) == PAYLOAD
    assert decode_body(PAYLOAD, "identity", limit=10_000) == PAYLOAD


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_a_compression_bomb_is_refused_with_413(encoding: str) -> None:
    bomb = ENCODERS[encoding](b"\0" * 50_000_000)  # 50 MB of zeros in a few KB
    assert len(bomb) < 200_000
    with pytest.raises(BodyTooLarge) as caught:
        decode_body(bomb, encoding, limit=1_000_000)
    assert caught.value.status == 413


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_garbage_and_truncated_streams_are_a_400(encoding: str) -> None:
    with pytest.raises(BadEncoding):
        decode_body(os.urandom(64), encoding, limit=10_000)
    with pytest.raises(BadEncoding):
        decode_body(ENCODERS[encoding](os.urandom(5000))[:-20], encoding, limit=10_000)


def test_unknown_encoding_is_a_415() -> None:
    with pytest.raises(ApiError) as caught:
        decode_body(PAYLOAD, "compress", limit=10_000)
    assert caught.value.status == 415


def test_plain_body_over_the_limit_is_a_413() -> None:
    with pytest.raises(BodyTooLarge):
        decode_body(b"x" * 101, None, limit=100)


async def _exhaust(limiter: RateLimiter, key: str) -> None:
    for expected_remaining in (2, 1, 0):
        decision = await limiter.check("3/minute", "test", key)
        assert decision.remaining == expected_remaining
    with pytest.raises(RateLimited) as caught:
        await limiter.check("3/minute", "test", key)
    headers = caught.value.headers or {}
    assert caught.value.status == 429
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert headers["RateLimit-Limit"] == "3" and headers["RateLimit-Remaining"] == "0"
    # Another identifier has its own budget.
    assert (await limiter.hit("3/minute", "test", key + "-other")).allowed


async def test_memory_limiter_enforces_and_reports() -> None:
    await _exhaust(RateLimiter(), "k1")


async def test_redis_limiter_is_shared_between_processes(redis_url: str) -> None:
    import uuid

    key = uuid.uuid4().hex
    first, second = RateLimiter(redis_url), RateLimiter(redis_url)
    await first.check("3/minute", "test", key)
    await second.check("3/minute", "test", key)
    await first.check("3/minute", "test", key)
    assert not (await second.hit("3/minute", "test", key)).allowed
