"""Schemathesis against the OpenAPI document a real server serves: no input makes it answer 5xx.

Cases are generated from ``/api/openapi.json`` (every feature's admin routes included) and sent
over HTTP to a real ``shipyard serve`` with the project's admin key, with ``{project}`` pinned to
the real project so requests get past authentication into the handlers. A few examples per
operation keep it quick; the point is breadth over every route, not depth on one.

The cases are the same on every run (``derandomize``), so CI is reproducible: a 500 found
once is found again until fixed. ``SHIPYARD_SCHEMATHESIS_RANDOM=1`` (and a larger
``SHIPYARD_SCHEMATHESIS_EXAMPLES``) explores new cases locally; each 500 it found so far
got a regression test of its own (alert channel URLs, cursors, push user properties).
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("SHIPYARD_SCHEMATHESIS_EXAMPLES", "8"))
RANDOM = os.environ.get("SHIPYARD_SCHEMATHESIS_RANDOM") == "1"


@pytest.mark.slow
def test_no_operation_answers_5xx(live_server: Any) -> None:
    spec = httpx.get(f"{live_server.url}/api/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(spec)
    project = str(live_server.creds["project_id"])
    headers = {"Authorization": f"Bearer {live_server.creds['secret_key']}"}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operations += 1
        failures += fuzz(result.ok(), live_server.url, project, headers)
    assert operations >= 10
    assert not failures, "\n".join(failures[:20])


def fuzz(operation: Any, base_url: str, project: str, headers: dict[str, str]) -> list[str]:
    """A few generated requests for one operation; returns the ones answered 5xx."""
    failures: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=not RANDOM,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(), authenticated=st.booleans())
    def exercise(case: Any, authenticated: bool) -> None:
        if case.path_parameters and "project" in case.path_parameters:
            case.path_parameters["project"] = project
        response = case.call(base_url=base_url, headers=headers if authenticated else {})
        if response.status_code >= 500:
            failures.append(
                f"{operation.method.upper()} {operation.path} -> {response.status_code}: "
                f"{response.text[:200]}\n  {case.as_curl_command()}"
            )

    exercise()
    return failures
