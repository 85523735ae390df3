"""Readable API docs at ``/api/docs`` that work offline.

The served OpenAPI document is rendered into one HTML page on the server with Jinja: no
JavaScript bundle, no CDN, nothing copied from other projects. Operations are grouped by
tag, each with its parameters, request body, responses and the schemas they refer to.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

router = APIRouter(include_in_schema=False)
_METHODS = ("get", "head", "post", "put", "patch", "delete")


@cache
def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["schema_type"] = schema_type
    return env


def ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def schema_type(schema: dict[str, Any] | None) -> str:
    """A one-line human rendering of a JSON schema: ``array of KeyOut``, ``string | null``…"""
    if not schema:
        return "any"
    if "$ref" in schema:
        return ref_name(schema["$ref"])
    for combiner in ("anyOf", "oneOf", "allOf"):
        if combiner in schema:
            return " | ".join(schema_type(s) for s in schema[combiner])
    kind = schema.get("type", "object")
    if kind == "array":
        return f"array of {schema_type(schema.get('items'))}"
    if kind == "object" and "additionalProperties" in schema and not schema.get("properties"):
        extra = schema["additionalProperties"]
        return f"map of {schema_type(extra) if isinstance(extra, dict) else 'any'}"
    if "enum" in schema:
        return " | ".join(repr(v) for v in schema["enum"])
    fmt = schema.get("format")
    return f"{kind} ({fmt})" if fmt else str(kind)


def operations(spec: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Operations grouped by their first tag, in path order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for path, item in spec.get("paths", {}).items():
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            body_schema = None
            body = op.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                body_schema = {"media": media, "schema": content.get("schema", {})}
                break
            responses = []
            for status, response in op.get("responses", {}).items():
                contents: list[dict[str, Any]] = list(response.get("content", {}).values())
                schema = contents[0].get("schema") if contents else None
                responses.append({"status": status, "description": response.get("description", ""), "schema": schema})
            tag = (op.get("tags") or ["other"])[0]
            groups.setdefault(tag, []).append(
                {
                    "id": op.get("operationId", f"{method}-{path}"),
                    "method": method.upper(),
                    "path": path,
                    "summary": op.get("summary", ""),
                    "description": op.get("description", ""),
                    "parameters": op.get("parameters", []),
                    "body": body_schema,
                    "responses": responses,
                    "secured": bool(op.get("security")),
                }
            )
    return sorted(groups.items())


def render_docs(spec: dict[str, Any]) -> str:
    return (
        _env()
        .get_template("apidocs.html")
        .render(
            info=spec.get("info", {}),
            groups=operations(spec),
            schemas=sorted(spec.get("components", {}).get("schemas", {}).items()),
        )
    )


@router.get("/api/docs")
async def api_docs(request: Request) -> HTMLResponse:
    """The API reference, rendered from ``/api/openapi.json``."""
    html = getattr(request.app.state, "api_docs_html", None)
    if html is None:  # the document never changes while the process runs
        html = render_docs(request.app.openapi())
        request.app.state.api_docs_html = html
    return HTMLResponse(html)
