"""A feature the way the feature engineers write theirs, for testing what core gives every
feature without knowing it: gateway classes, CORS, limits, auth enumeration, pagination."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from shipyard.core.deps import Developer, Viewer, client_project
from shipyard.core.pagination import PageParams
from shipyard.features import Feature

public = APIRouter(tags=["fake"])
admin = APIRouter(tags=["fake"])


@public.post("/fake/{project_id}/ingest")
async def ingest(project_id: int, request: Request) -> dict[str, Any]:
    body = await request.body()
    return {"size": len(body), "encoding": request.headers.get("content-encoding"), "body": body[:100].decode()}


@public.get("/fake/{project_id}/flags")
async def flags(project_id: int, request: Request) -> dict[str, Any]:
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    project = await client_project(request.app.state.ctx, token)
    return {"project": project.id}


@admin.get("/projects/{project}/fake-items")
async def list_items(access: Viewer, page: PageParams = Depends()) -> dict[str, Any]:
    return page.page([], lambda row: row)


@admin.post("/projects/{project}/fake-items", status_code=201)
async def create_item(access: Developer) -> dict[str, Any]:
    return {"ok": True}


feature = Feature(name="fake", admin_routers=lambda: [admin], public_routers=lambda: [public])
