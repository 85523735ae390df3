"""Per-process invalidation of what the manifest endpoint keeps in memory.

Every change to a project's channels, updates, rollouts or signing key bumps the
project's generation here after its transaction commits; cached resolutions older than
the generation are dropped on their next use. Other processes notice within
``updates_cache_seconds`` (their entries expire).
"""

from __future__ import annotations

from shipyard.core.context import Context


def generation(ctx: Context, project_id: int) -> int:
    gens: dict[int, int] = ctx.extras.setdefault("updates_generations", {})
    return gens.get(project_id, 0)


def invalidate(ctx: Context, project_id: int) -> None:
    gens: dict[int, int] = ctx.extras.setdefault("updates_generations", {})
    gens[project_id] = gens.get(project_id, 0) + 1
