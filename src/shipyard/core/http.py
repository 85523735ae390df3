"""Outbound HTTP used by every feature (push providers, webhooks, JWKS, …).

* One pooled ``httpx.AsyncClient`` per process (HTTP/2 capable), with timeouts.
* Retries with exponential backoff and full jitter on connection errors, 429 and 502-504,
  honouring ``Retry-After`` (capped), for up to ``retries`` extra attempts.
* A circuit breaker per *destination* (a name the caller picks, e.g.
  ``push:expo:project:3``): after ``failure_threshold`` failures within ``window``
  seconds it opens and calls fail fast with :class:`CircuitOpen` until the cool-down
  passes; then one trial call decides whether it closes again. With Redis configured
  the state is shared by every process.
* An SSRF guard: user-configured URLs may not point at private, loopback, link-local
  or otherwise internal addresses unless ``allow_private_outbound`` is set.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import random
import socket
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from prometheus_client import Counter, Gauge

from shipyard.core.context import Context

log = logging.getLogger("shipyard.http")

OUTBOUND = Counter("shipyard_outbound_requests_total", "Outbound HTTP requests", ["destination", "outcome"])
CIRCUIT_OPEN = Gauge("shipyard_circuit_open", "1 while a destination's circuit is open", ["destination"])

RETRYABLE_STATUS = {429, 502, 503, 504}


class CircuitOpen(Exception):  # noqa: N818  (reads best as a state)
    def __init__(self, destination: str, retry_after: float) -> None:
        super().__init__(f"circuit for {destination} is open; retry in {retry_after:.0f} s")
        self.destination = destination
        self.retry_after = retry_after


class BlockedDestination(ValueError):
    """The URL points somewhere outbound calls may not go (SSRF guard)."""


# --- circuit breaker ------------------------------------------------------------------------


@dataclass
class BreakerPolicy:
    failure_threshold: int = 5
    window: float = 60.0
    cooldown: float = 30.0


class BreakerStore(Protocol):
    async def open_until(self, destination: str) -> float: ...
    async def record_failure(self, destination: str, policy: BreakerPolicy) -> bool: ...
    async def record_success(self, destination: str) -> None: ...
    async def try_half_open(self, destination: str, policy: BreakerPolicy) -> bool: ...


class MemoryBreakerStore:
    def __init__(self) -> None:
        self._failures: dict[str, list[float]] = {}
        self._open_until: dict[str, float] = {}
        self._trial: dict[str, float] = {}

    async def open_until(self, destination: str) -> float:
        return self._open_until.get(destination, 0.0)

    async def record_failure(self, destination: str, policy: BreakerPolicy) -> bool:
        now = time.time()
        recent = [t for t in self._failures.get(destination, []) if t > now - policy.window] + [now]
        self._failures[destination] = recent
        half_open_trial_failed = destination in self._trial
        if len(recent) >= policy.failure_threshold or half_open_trial_failed:
            self._open_until[destination] = now + policy.cooldown
            self._failures[destination] = []
            self._trial.pop(destination, None)
            return True
        return False

    async def record_success(self, destination: str) -> None:
        self._failures.pop(destination, None)
        self._open_until.pop(destination, None)
        self._trial.pop(destination, None)

    async def try_half_open(self, destination: str, policy: BreakerPolicy) -> bool:
        now = time.time()
        started = self._trial.get(destination)
        if started is not None and started > now - policy.cooldown:
            return False  # a trial call is already in flight
        self._trial[destination] = now
        return True


class RedisBreakerStore:
    """The same state in Redis so every API and worker process sees one circuit."""

    def __init__(self, redis: Any, prefix: str = "shipyard:cb:") -> None:
        self.redis = redis
        self.prefix = prefix

    async def open_until(self, destination: str) -> float:
        value = await self.redis.get(self.prefix + "open:" + destination)
        return float(value) if value else 0.0

    async def record_failure(self, destination: str, policy: BreakerPolicy) -> bool:
        now = time.time()
        key = self.prefix + "fail:" + destination
        trial_key = self.prefix + "trial:" + destination
        pipe = self.redis.pipeline()
        pipe.zadd(key, {f"{now}:{random.random()}": now})
        pipe.zremrangebyscore(key, 0, now - policy.window)
        pipe.zcard(key)
        pipe.expire(key, int(policy.window) + 1)
        pipe.exists(trial_key)
        _, _, count, _, in_trial = await pipe.execute()
        if count >= policy.failure_threshold or in_trial:
            pipe = self.redis.pipeline()
            pipe.set(self.prefix + "open:" + destination, now + policy.cooldown, ex=int(policy.cooldown * 4) + 1)
            pipe.delete(key, trial_key)
            await pipe.execute()
            return True
        return False

    async def record_success(self, destination: str) -> None:
        await self.redis.delete(
            self.prefix + "fail:" + destination,
            self.prefix + "open:" + destination,
            self.prefix + "trial:" + destination,
        )

    async def try_half_open(self, destination: str, policy: BreakerPolicy) -> bool:
        return bool(
            await self.redis.set(self.prefix + "trial:" + destination, "1", nx=True, ex=max(1, int(policy.cooldown)))
        )


class CircuitBreaker:
    def __init__(self, store: BreakerStore) -> None:
        self.store = store
        self.policies: dict[str, BreakerPolicy] = {}

    def policy(self, destination: str) -> BreakerPolicy:
        return self.policies.get(destination) or self.policies.get(destination.split(":")[0]) or BreakerPolicy()

    async def before_call(self, destination: str) -> None:
        """Raise CircuitOpen unless a call may go out now."""
        until = await self.store.open_until(destination)
        now = time.time()
        if until > now:
            raise CircuitOpen(destination, until - now)
        if until and not await self.store.try_half_open(destination, self.policy(destination)):
            raise CircuitOpen(destination, self.policy(destination).cooldown / 4)

    async def success(self, destination: str) -> None:
        await self.store.record_success(destination)
        CIRCUIT_OPEN.labels(_metric_name(destination)).set(0)

    async def failure(self, destination: str) -> None:
        if await self.store.record_failure(destination, self.policy(destination)):
            log.warning("circuit for %s opened", destination)
            CIRCUIT_OPEN.labels(_metric_name(destination)).set(1)

    async def state(self, destination: str) -> str:
        until = await self.store.open_until(destination)
        if until > time.time():
            return "open"
        return "half_open" if until else "closed"


def _metric_name(destination: str) -> str:
    # Keep label cardinality bounded: drop per-project suffixes.
    return ":".join(destination.split(":")[:2])


# --- SSRF guard -------------------------------------------------------------------------------


def _is_internal(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


async def check_destination(url: str, *, allow_private: bool) -> None:
    """Reject non-HTTP schemes and, unless allowed, hosts resolving to internal addresses."""
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is not a number raises here
    except ValueError as exc:  # e.g. "Invalid IPv6 URL", "Port out of range"
        raise BlockedDestination(f"not a valid URL ({exc}): {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BlockedDestination(f"only http(s) URLs with a host are allowed: {url!r}")
    host = parts.hostname
    try:
        host.encode("idna")
        valid = not any(ord(c) <= 32 or ord(c) == 127 for c in host)
    except UnicodeError:  # lone surrogates, over-long labels
        valid = False
    if not valid:  # no DNS name looks like that, whether or not private hosts are allowed
        raise BlockedDestination(f"not a valid host name: {host!r}")
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BlockedDestination(f"cannot resolve {host}: {exc}") from None
    for info in infos:
        if _is_internal(str(info[4][0])):
            raise BlockedDestination(f"{host} resolves to an internal address ({info[4][0]}); not allowed")


# --- the client -------------------------------------------------------------------------------


def retry_after_seconds(response: httpx.Response, cap: float = 300.0) -> float | None:
    """Parse ``Retry-After`` (seconds or HTTP date)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return min(cap, max(0.0, float(value)))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        if parsed is None:
            return None
        return min(cap, max(0.0, parsed.timestamp() - time.time()))


class Outbound:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.client = httpx.AsyncClient(
            http2=True,
            timeout=httpx.Timeout(15.0, connect=5.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            follow_redirects=False,
        )
        store: BreakerStore = RedisBreakerStore(ctx.redis) if ctx.redis is not None else MemoryBreakerStore()
        self.breaker = CircuitBreaker(store)

    async def request(
        self,
        method: str,
        url: str,
        *,
        destination: str,
        retries: int = 2,
        check_url: bool = False,
        backoff_base: float = 0.5,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request through the destination's circuit, retrying transient failures.

        Returns the final response (which may still be an error status for the caller to
        interpret); raises CircuitOpen, BlockedDestination or the last transport error.
        """
        if check_url:
            await check_destination(url, allow_private=self.ctx.settings.allow_private_outbound)
        attempt = 0
        while True:
            await self.breaker.before_call(destination)
            try:
                response = await self.client.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                await self.breaker.failure(destination)
                OUTBOUND.labels(_metric_name(destination), "transport_error").inc()
                if attempt >= retries:
                    raise
                delay = _backoff(attempt, backoff_base)
                log.info("outbound %s %s failed (%s); retry in %.1f s", method, destination, exc, delay)
            else:
                if response.status_code in RETRYABLE_STATUS or response.status_code >= 500:
                    await self.breaker.failure(destination)
                    OUTBOUND.labels(_metric_name(destination), str(response.status_code)).inc()
                    if attempt >= retries or response.status_code not in RETRYABLE_STATUS:
                        return response
                    delay = retry_after_seconds(response) or _backoff(attempt, backoff_base)
                else:
                    await self.breaker.success(destination)
                    OUTBOUND.labels(_metric_name(destination), str(response.status_code)).inc()
                    return response
            attempt += 1
            await asyncio.sleep(delay)

    async def close(self) -> None:
        await self.client.aclose()


def _backoff(attempt: int, base: float) -> float:
    return random.uniform(0, base * 2**attempt)


def outbound(ctx: Context) -> Outbound:
    """The process's outbound client, created on first use."""
    client = ctx.extras.get("outbound")
    if client is None:
        client = ctx.extras["outbound"] = Outbound(ctx)
    return client
