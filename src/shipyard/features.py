"""The feature packages this server is assembled from.

Each entry names a package that provides, in its ``__init__``, a module-level
``feature = Feature(...)``. Adding a feature is one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import click
    from fastapi import APIRouter

FEATURE_PACKAGES: list[str] = [
    # one line per feature package, e.g. "shipyard.updates",
    "shipyard.updates",
    "shipyard.errors",
    "shipyard.push",
    "shipyard.analytics",
]

# Core modules that register job handlers and schedules.
CORE_JOB_MODULES: list[str] = ["shipyard.core.alerts", "shipyard.core.maintenance"]


@dataclass(frozen=True)
class NavEntry:
    title: str
    path: str  # dashboard path below /projects/{slug}/


@dataclass(frozen=True)
class Feature:
    name: str
    # Admin API routers (mounted under /api/v1) and client-facing routers (mounted at root).
    admin_routers: Callable[[], list[APIRouter]] = lambda: []
    public_routers: Callable[[], list[APIRouter]] = lambda: []
    dashboard_routers: Callable[[], list[APIRouter]] = lambda: []
    # Modules imported for their side effect of registering job handlers and schedules.
    job_modules: list[str] = field(default_factory=list)
    cli: Callable[[], click.Command] | None = None
    migrations: Path | None = None
    nav: list[NavEntry] = field(default_factory=list)
    # Called once at app start with the app (e.g. to warm caches or register hooks).
    on_startup: Callable[..., object] | None = None


def job_modules() -> list[str]:
    """Every module to import so that all job handlers are registered."""
    return CORE_JOB_MODULES + [m for f in load_features() for m in f.job_modules]


def load_features() -> list[Feature]:
    return [importlib.import_module(name).feature for name in FEATURE_PACKAGES]


def migration_dirs() -> list[Path]:
    core = Path(__file__).parent / "core" / "migrations" / "versions"
    return [core] + [f.migrations for f in load_features() if f.migrations is not None]
