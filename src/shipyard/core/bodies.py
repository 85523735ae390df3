"""Request bodies: decoding ``Content-Encoding`` with a hard cap on the decompressed size.

Every client-facing ingest (Sentry envelopes, Segment batches, push registrations) accepts
compressed bodies. A few kilobytes of gzip or brotli can expand to gigabytes, so each decoder
stops as soon as its output passes ``limit`` instead of inflating first and checking after.
"""

from __future__ import annotations

import io
import zlib

import brotli
import zstandard

from shipyard.core.errors import ApiError

SUPPORTED_ENCODINGS = ("gzip", "x-gzip", "deflate", "br", "zstd", "identity")


class BodyTooLarge(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(413, "payload_too_large", message)


class BadEncoding(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(400, "invalid_encoding", message)


def decode_body(body: bytes, content_encoding: str | None, *, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (possibly a comma-separated chain); raise 413 past ``limit`` bytes."""
    encodings = [e.strip().lower() for e in (content_encoding or "").split(",") if e.strip()]
    # Encodings are listed in the order they were applied; undo them last to first.
    for encoding in reversed(encodings):
        body = _decode_one(body, encoding, limit)
    if len(body) > limit:
        raise BodyTooLarge(f"request body is larger than {limit} bytes")
    return body


def _decode_one(body: bytes, encoding: str, limit: int) -> bytes:
    try:
        if encoding in ("gzip", "x-gzip"):
            return _zlib(body, zlib.MAX_WBITS | 16, limit)
        if encoding == "deflate":
            # RFC 9110 deflate is zlib-wrapped, but many clients send raw deflate; accept both.
            try:
                return _zlib(body, zlib.MAX_WBITS, limit)
            except zlib.error:
                return _zlib(body, -zlib.MAX_WBITS, limit)
        if encoding == "br":
            return _brotli(body, limit)
        if encoding == "zstd":
            return _zstd(body, limit)
        if encoding == "identity":
            return body
    except (zlib.error, brotli.error, zstandard.ZstdError) as exc:
        raise BadEncoding(f"body is not valid {encoding} data: {exc}") from exc
    message = f"unsupported Content-Encoding {encoding!r}; use gzip, deflate, br or zstd"
    raise ApiError(415, "unsupported_encoding", message)


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"decompressed request body is larger than {limit} bytes")


def _zlib(body: bytes, wbits: int, limit: int) -> bytes:
    decoder = zlib.decompressobj(wbits)
    out = decoder.decompress(body, limit + 1)
    if len(out) > limit or decoder.unconsumed_tail:
        raise _too_large(limit)
    if not decoder.eof:
        raise zlib.error("truncated stream")
    return out


def _brotli(body: bytes, limit: int) -> bytes:
    decoder = brotli.Decompressor()
    out = decoder.process(body, output_buffer_limit=limit + 1)
    if len(out) > limit or not decoder.can_accept_more_data():
        raise _too_large(limit)
    if not decoder.is_finished():
        raise brotli.error("truncated stream")
    return out


def _zstd(body: bytes, limit: int) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True)
    out = reader.read(limit + 1)
    if len(out) > limit:
        raise _too_large(limit)
    return out
