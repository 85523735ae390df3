"""The objects a running Shipyard process shares: settings, database, secret box, Redis.

One :class:`Context` is built per process (by the app's lifespan, the worker or the
CLI) and handed to services, so nothing reads globals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shipyard.core.crypto import SecretBox
from shipyard.core.db import Database
from shipyard.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis


@dataclass
class Context:
    settings: Settings
    db: Database
    box: SecretBox
    redis: Redis | None = None
    # Per-process extension objects that features attach (blob store, caches, …).
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, settings: Settings) -> Context:
        settings.check_production()
        db = Database(
            settings.resolved_database_url,
            pool_size=settings.db_pool_size,
            sqlite_synchronous=settings.sqlite_synchronous,
            connect_timeout=settings.db_connect_timeout,
        )
        box = SecretBox(settings.resolved_secret_key, settings.previous_secret_keys)
        redis = None
        if settings.redis_url:
            from redis.asyncio import Redis

            redis = Redis.from_url(settings.redis_url)
        return cls(settings=settings, db=db, box=box, redis=redis)

    async def close(self) -> None:
        # Flush group commits before the engine goes away, then release clients.
        for committer in self.extras.get("group_committers", {}).values():
            await committer.close()
        # Then what features registered (e.g. a loader moving what the committers wrote).
        for hook in self.extras.get("close_hooks", []):
            await hook()
        outbound = self.extras.get("outbound")
        if outbound is not None:
            await outbound.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.db.dispose()
