"""Against a real `shipyard serve`: one JSON access-log line per request, ids echoed, no secrets logged."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest


@pytest.mark.slow
def test_access_log_is_json_with_route_status_duration_and_request_id(live_server: Any) -> None:
    secret = live_server.creds["secret_key"]
    project = live_server.creds["project_id"]
    r = httpx.get(
        f"{live_server.url}/api/v1/projects/{project}",
        headers={"Authorization": f"Bearer {secret}", "X-Request-ID": "live-rid-1"},
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "live-rid-1"
    assert httpx.get(f"{live_server.url}/readyz").status_code == 200  # embedded worker heartbeats

    log_file = live_server.data_dir / f"server-{live_server.port}.log"
    line: dict[str, Any] | None = None
    deadline = time.monotonic() + 10
    while line is None and time.monotonic() < deadline:
        for raw in log_file.read_text().splitlines():
            if raw.startswith("{") and '"live-rid-1"' in raw:
                line = json.loads(raw)
        time.sleep(0.1)
    assert line is not None
    assert line["event"] == "request" and line["method"] == "GET" and line["status"] == 200
    assert line["route"] == "/api/v1/projects/{project}" and line["path"] == f"/api/v1/projects/{project}"
    assert isinstance(line["duration_ms"], float) and line["timestamp"].endswith("Z")
    assert secret not in log_file.read_text()
