"""Enumerating an app's routes with their full paths, whatever FastAPI version is installed.

Recent FastAPI keeps included routers lazily (``app.routes`` lists the inclusions, not the
routes), so code that needs every route — the gateway's route classes and metrics labels,
the auth-matrix test — goes through :func:`flat_routes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.routing import BaseRoute


@dataclass(frozen=True)
class RouteInfo:
    path: str
    methods: frozenset[str]
    path_regex: Any
    original: BaseRoute  # the object Starlette/FastAPI puts in scope["route"]
    endpoint: Any
    dependant: Any  # FastAPI's dependency tree (None for plain Starlette routes and mounts)
    include_in_schema: bool


def flat_routes(routes: Sequence[BaseRoute]) -> list[RouteInfo]:
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: included routes are already flattened
        contexts: Iterable[Any] = routes
        originals = list(routes)
    else:
        contexts = list(iter_route_contexts(routes))
        originals = [c.original_route for c in contexts]
    out = []
    for context, original in zip(contexts, originals, strict=True):
        out.append(
            RouteInfo(
                path=getattr(context, "path", ""),
                methods=frozenset(getattr(context, "methods", None) or ()),
                path_regex=getattr(context, "path_regex", None),
                original=original,
                endpoint=getattr(context, "endpoint", None),
                dependant=getattr(context, "dependant", None),
                include_in_schema=bool(getattr(context, "include_in_schema", False)),
            )
        )
    return out
