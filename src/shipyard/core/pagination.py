"""Keyset pagination shared by every list endpoint: ``?limit=&cursor=`` in,
``{"data": [...], "next_cursor": ...}`` out. Cursors are opaque to clients."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel

from shipyard.core.errors import BadRequest

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = None


class PageParams:
    def __init__(
        self,
        limit: int = Query(50, ge=1, le=500, description="Items per page (1–500)."),
        cursor: str | None = Query(None, max_length=200, description="`next_cursor` of the previous page."),
    ) -> None:
        self.limit = limit
        self.cursor = cursor

    def after(self) -> str | None:
        """The decoded position to continue from, or None for the first page."""
        if not self.cursor:
            return None
        try:
            return base64.urlsafe_b64decode(self.cursor.encode() + b"==").decode()
        except Exception:
            raise BadRequest("invalid cursor") from None

    def after_int(self) -> int | None:
        value = self.after()
        if value is None:
            return None
        digits = value.removeprefix("-")
        if not digits.isdecimal():  # not isdigit(): "²".isdigit() is True, and int("²") fails
            raise BadRequest("invalid cursor")
        return int(value)

    def page(self, rows: list[Any], position: Any) -> dict[str, Any]:
        """``rows`` fetched with ``limit + 1``; ``position(row)`` gives the cursor value."""
        more = len(rows) > self.limit
        rows = rows[: self.limit]
        cursor = None
        if more and rows:
            cursor = base64.urlsafe_b64encode(str(position(rows[-1])).encode()).decode().rstrip("=")
        return {"data": rows, "next_cursor": cursor}


async def page_params(
    limit: int = Query(50, ge=1, le=500, description="Items per page (1–500)."),
    cursor: str | None = Query(None, max_length=200, description="`next_cursor` of the previous page."),
) -> PageParams:
    """The same parameters as ``Depends(PageParams)``, resolved on the event loop.

    FastAPI runs a class dependency (``Annotated[PageParams, Depends()]``) in its thread
    pool, which costs a thread hand-off on every list request (seen in the profile of
    ``GET /api/v1/projects``); a coroutine dependency does not.
    """
    return PageParams(limit, cursor)


Paging = Annotated[PageParams, Depends(page_params)]
