"""The dashboard pages and the alerts on PostgreSQL: the same tests as on SQLite (the impact
sort's SQL, the pages' queries and the alert rules' windows must hold on both engines)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shipyard.core.context import Context
from tests.errors.test_alerts import (  # noqa: F401  (fixtures used by the imported tests)
    hook,
    receiver,
    test_a_spike_against_the_issues_own_baseline,
    test_crash_free_rate_under_threshold_alerts_once_and_resolves,
    test_event_frequency_storm_sends_one_alert_per_interval,
    test_new_issue_and_regression_alerts_are_delivered_once,
)
from tests.errors.test_dashboard import (  # noqa: F401
    test_actions_need_csrf_and_the_developer_role,
    test_issue_list_filters_sorts_and_pages,
    test_issue_list_paginates,
    test_issue_page_shows_the_crash_and_any_chosen_event,
    test_release_health_page,
)
from tests.errors.test_feedback_retention import (  # noqa: F401
    test_retention_purges_old_events_and_keeps_issue_counts,
)


@pytest.fixture
async def ctx(pg_ctx: Context) -> AsyncIterator[Context]:
    """Every fixture built on ``ctx`` (app, client, project) runs on PostgreSQL here."""
    yield pg_ctx
