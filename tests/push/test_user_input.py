"""Free-form input to the push user endpoints: what cannot be stored is a 4xx, never a 500."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import admin_headers


@pytest.mark.parametrize(
    ("user_id", "properties"),
    [
        ("9¢°á;\U000a852a´®\x07\U0008bb1fO맻", {"plan": "pro"}),  # found by the schemathesis fuzz
        ("grower-1", {"big": 11360041966881167228069755267953197056}),
        ("grower-1", {"nested": {"deep": [{"": None, "4w": True}]}, "": {"x": -20719409}}),
    ],
)
async def test_put_user_with_odd_ids_and_properties_is_never_a_500(
    client: httpx.AsyncClient, project: dict[str, Any], user_id: str, properties: dict[str, Any]
) -> None:
    response = await client.put(
        f"/api/v1/projects/{project['id']}/push/users/{quote(user_id, safe='')}",
        content=json.dumps({"properties": properties, "timezone": None, "locale": None}),
        headers={**admin_headers(project), "Content-Type": "application/json"},
    )
    assert response.status_code < 500, response.text
