"""`shipyard analytics` against a real `shipyard serve` process: trends, funnel and retention
tables and CSV from events sent through the Segment API, the tracking plan exported and
imported as JSON, and a user's events exported and erased."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import httpx
import pytest

from shipyard.analytics.cli import parse_filter
from tests.analytics.helpers import basic
from tests.analytics.test_dashboard_browser import _events


def shipyard(server: Any, *args: str, check: bool = True, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "SHIPYARD_URL": server.url, "SHIPYARD_KEY": key or server.creds["secret_key"]}
    result = subprocess.run(
        [sys.executable, "-m", "shipyard.cli", "analytics", *args], env=env, capture_output=True, text=True, timeout=120
    )
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


def _rows(table: str) -> list[list[str]]:
    """A printed table's body rows (after the header and the dashes), split into cells."""
    lines = table.splitlines()
    return [line.split() for line in lines[2:] if line.strip()]


@pytest.mark.slow
def test_queries_print_tables_and_csv(live_server: Any) -> None:
    slug = live_server.creds["project_slug"]
    start = (datetime.now(UTC) - timedelta(days=2)).replace(hour=9, minute=0, second=0, microsecond=0)
    sent = httpx.post(
        live_server.url + "/v1/batch",
        json={"batch": _events(start)},
        headers=basic(live_server.creds["write_key"]),
        timeout=10,
    )
    assert sent.status_code == 200, sent.text
    day = start.date().isoformat()
    span = ["--from", day, "--to", day]

    trends = shipyard(live_server, "trends", "-p", slug, "-e", "app_opened", "-e", "plant_created", *span).stdout
    assert trends.splitlines()[0].split() == ["day", "app_opened", "plant_created"]
    assert _rows(trends) == [[day, "3", "2"], ["total", "3", "2"]]
    csv = shipyard(live_server, "trends", "-p", slug, "-e", "app_opened", "--math", "unique_users", "--csv", *span)
    assert csv.stdout.splitlines() == ["series,breakdown_value,bucket,value", f"app_opened,,{day},3"]
    rolling = shipyard(live_server, "trends", "-p", slug, "-e", "app_opened", "--range", "last_7_days", "--csv")
    today = datetime.now(UTC).date()
    week = ["--from", (today - timedelta(days=6)).isoformat(), "--to", today.isoformat()]
    fixed = shipyard(live_server, "trends", "-p", slug, "-e", "app_opened", "--csv", *week)
    assert len(rolling.stdout.splitlines()) == 8 and rolling.stdout == fixed.stdout
    assert f"app_opened,,{day},3" in rolling.stdout.splitlines()

    steps = ["-s", "app_opened", "-s", "plant_created", "-s", "care_task_completed"]
    funnel = shipyard(live_server, "funnel", "-p", slug, *steps, "--window", "1", *span).stdout
    assert [row[2] for row in _rows(funnel)[:3]] == ["3", "2", "1"]
    assert funnel.strip().endswith("conversion 33.3%")
    as_json = json.loads(shipyard(live_server, "funnel", "-p", slug, *steps, "--json", *span).stdout)
    assert as_json["conversion_rate"] == pytest.approx(1 / 3, abs=1e-3)

    retention = shipyard(
        live_server,
        "retention",
        "-p",
        slug,
        "--start-event",
        "app_opened",
        "--return-event",
        "app_opened",
        "--interval",
        "day",
        "--periods",
        "1",
        *span,
    ).stdout
    assert retention.splitlines()[0].split() == ["cohort", "users", "day", "0", "day", "1"]
    assert _rows(retention) == [[day, "3", "100.0%", "33.3%"]]

    # Property filters: only g1's care task has task_type; g1 and g2 created plants.
    watering = ["-e", "care_task_completed", "--where", "task_type = watering", "--csv", *span]
    assert shipyard(live_server, "trends", "-p", slug, *watering).stdout.splitlines()[1:] == [
        f"care_task_completed,,{day},1"
    ]
    untyped = ["-e", "app_opened", "-w", "task_type is_set", "--csv", *span]
    assert shipyard(live_server, "trends", "-p", slug, *untyped).stdout.splitlines()[1:] == [f"app_opened,,{day},0"]
    none_match = shipyard(live_server, "funnel", "-p", slug, *steps, "-w", "task_type in mowing,pruning", *span)
    assert [row[2] for row in _rows(none_match.stdout)[:3]] == ["0", "0", "0"]
    typed_retention = ["--start-event", "care_task_completed", "--start-where", "task_type = watering"]
    returned = shipyard(
        live_server, "retention", "-p", slug, *typed_retention, "--interval", "day", "--periods", "1", *span
    )
    assert _rows(returned.stdout) == [[day, "1", "100.0%", "100.0%"]]
    not_a_string = shipyard(live_server, "trends", "-p", slug, "-w", "task_type contains 3", *span, check=False)
    assert not_a_string.returncode == 1 and "contains needs a string value" in not_a_string.stderr

    one_step = shipyard(live_server, "funnel", "-p", slug, "-s", "a", check=False)
    assert one_step.returncode == 1 and "steps: List should have at least 2 items" in one_step.stderr
    backwards = ["--from", day, "--to", "2020-01-01"]
    bad = shipyard(live_server, "funnel", "-p", slug, "-s", "a", "-s", "b", *backwards, check=False)
    assert bad.returncode == 1 and "date_from is after date_to" in bad.stderr
    unauthorised = shipyard(live_server, "trends", "-p", slug, key="sk_not_a_real_key", check=False)
    assert unauthorised.returncode != 0 and "invalid, expired or revoked secret key" in unauthorised.stderr


@pytest.mark.slow
def test_plan_export_import_and_user_export_erase(live_server: Any, tmp_path: Path) -> None:
    slug = live_server.creds["project_slug"]
    assert json.loads(shipyard(live_server, "plan", "export", "-p", slug).stdout) == {"events": []}
    plan = {
        "events": [
            {
                "event": "plant_created",
                "description": "A grower added a plant.",
                "feature_area": "plant_management",
                "properties": [{"name": "plant_id", "type": "string", "required": True, "description": ""}],
                "allow_additional": True,
            },
            {"event": "post_liked", "feature_area": "community"},
        ]
    }
    source = tmp_path / "plan.json"
    source.write_text(json.dumps(plan))
    dry = shipyard(live_server, "plan", "import", "-p", slug, str(source), "--dry-run").stdout
    assert "would change: 2 created" in dry
    assert json.loads(shipyard(live_server, "plan", "export", "-p", slug).stdout) == {"events": []}
    imported = shipyard(live_server, "plan", "import", "-p", slug, str(source)).stdout
    assert "2 created, 0 updated, 0 deleted, 0 unchanged" in imported
    again = shipyard(live_server, "plan", "import", "-p", slug, str(source)).stdout
    assert "0 created, 0 updated, 0 deleted, 2 unchanged" in again

    exported_file = tmp_path / "exported.json"
    shipyard(live_server, "plan", "export", "-p", slug, "-o", str(exported_file))
    exported = json.loads(exported_file.read_text())["events"]
    assert [s["event"] for s in exported] == ["plant_created", "post_liked"]
    assert exported[0]["properties"][0] == plan["events"][0]["properties"][0]

    only_one = tmp_path / "one.json"
    only_one.write_text(json.dumps({"events": [{**exported[0], "description": "Changed."}]}))
    replaced = shipyard(live_server, "plan", "import", "-p", slug, str(only_one), "--replace").stdout
    assert "0 created, 1 updated, 1 deleted, 0 unchanged" in replaced
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"events": [{"description": "no name"}]}')
    refused = shipyard(live_server, "plan", "import", "-p", slug, str(garbage), check=False)
    assert refused.returncode != 0 and "expected" in refused.stderr

    # A user's events go out as JSON, then everything about them is erased.
    start = datetime.now(UTC) - timedelta(days=1)
    sent = httpx.post(
        live_server.url + "/v1/batch",
        json={"batch": _events(start)},
        headers=basic(live_server.creds["write_key"]),
        timeout=10,
    )
    assert sent.status_code == 200
    out = tmp_path / "g1.json"
    shipyard(live_server, "events", "export", "-p", slug, "--user", "g1", "-o", str(out))
    assert sorted(e["event"] for e in json.loads(out.read_text())["events"]) == [
        "app_opened",
        "app_opened",
        "care_task_completed",
        "plant_created",
    ]
    erased = shipyard(live_server, "events", "erase", "-p", slug, "--user", "g1", "--yes").stdout
    assert erased.startswith("erased ") and "of g1" in erased
    after = json.loads(shipyard(live_server, "events", "export", "-p", slug, "--user", "g1").stdout)
    assert after["events"] == []
    unconfirmed = shipyard(live_server, "events", "erase", "-p", slug, "--user", "g2", check=False)
    assert unconfirmed.returncode != 0  # no --yes and no terminal to confirm on: nothing erased
    still = json.loads(shipyard(live_server, "events", "export", "-p", slug, "--user", "g2").stdout)
    assert len(still["events"]) == 2


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("plan = pro", {"property": "plan", "op": "eq", "value": "pro"}),
        ("user:plant_count >= 3", {"property": "plant_count", "scope": "user", "op": "gte", "value": 3}),
        (
            "context:os.name in iOS, Android",
            {"property": "os.name", "scope": "context", "op": "in", "value": ["iOS", "Android"]},
        ),
        ('code eq "007"', {"property": "code", "op": "eq", "value": "007"}),
        ("beta = true", {"property": "beta", "op": "eq", "value": True}),
        ("email is_set", {"property": "email", "op": "is_set"}),
        ("title contains two words", {"property": "title", "op": "contains", "value": "two words"}),
        ("url:path = /home", {"property": "url:path", "op": "eq", "value": "/home"}),
    ],
)
def test_where_conditions_parse_into_api_filters(text: str, parsed: dict[str, Any]) -> None:
    assert parse_filter(text) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plan", "expected PROPERTY OP [VALUE]"),
        ("plan ~ pro", "unknown operator '~'"),
        ("plan =", "eq needs a value"),
        ("email is_set yes", "is_set takes no value"),
    ],
)
def test_malformed_where_conditions_are_refused_before_any_request(text: str, message: str) -> None:
    with pytest.raises(click.BadParameter, match=re.escape(message)):
        parse_filter(text)
