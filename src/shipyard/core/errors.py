"""The one error shape every route answers with: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from shipyard.core.db import DatabaseUnavailable


class ApiError(Exception):
    """Raise from any route or service to answer with a JSON error."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.details = details


class NotFound(ApiError):
    def __init__(self, what: str) -> None:
        super().__init__(404, "not_found", f"{what} not found")


class Conflict(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(409, "conflict", message)


class BadRequest(ApiError):
    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(400, code, message)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in err.get("loc", ())), "message": err.get("msg", "")}
            for err in exc.errors()
        ]
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
        return JSONResponse(error_body("invalid_request", f"invalid request: {summary}", problems), status_code=422)

    @app.exception_handler(OverflowError)
    async def _overflow(_request: Request, exc: OverflowError) -> JSONResponse:
        # SQLite refuses integers beyond 64 bits when binding them: an id no row can have.
        return JSONResponse(error_body("bad_request", "a number in the request is out of range"), status_code=400)

    @app.exception_handler(orjson.JSONEncodeError)
    async def _unstorable_json(_request: Request, exc: orjson.JSONEncodeError) -> JSONResponse:
        # Free-form JSON (event properties, push data) that parsed but cannot be stored:
        # integers beyond 64 bits or lone UTF-16 surrogates. Storing it as given is impossible.
        return JSONResponse(
            error_body("bad_request", f"a value in the request cannot be stored: {exc}"), status_code=400
        )

    @app.exception_handler(sa_exc.StatementError)
    async def _unstorable_bound_json(request: Request, exc: sa_exc.StatementError) -> JSONResponse:
        # The same JSON, caught by the engine's serializer while binding a JSON column:
        # SQLAlchemy wraps it. Anything else wrapped here is a bug, and stays a 500.
        if isinstance(exc.orig, orjson.JSONEncodeError):
            return await _unstorable_json(request, exc.orig)
        raise exc

    @app.exception_handler(sa_exc.DataError)
    async def _data_error(_request: Request, exc: sa_exc.DataError) -> JSONResponse:
        # PostgreSQL rejected a value's type or range (e.g. an id beyond int8).
        return JSONResponse(
            error_body("bad_request", "a value in the request is out of range or malformed"), status_code=400
        )

    @app.exception_handler(DatabaseUnavailable)
    async def _db_down(_request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return JSONResponse(
            error_body("unavailable", "the database is unavailable; retry shortly"),
            status_code=503,
            headers={"Retry-After": "5"},
        )
