"""Insight queries on small hand-made histories: every number is checked by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from shipyard.analytics import behaviour, funnels, identity, plan, queries, retention, rollups
from shipyard.core.context import Context
from tests.analytics.helpers import insert

T0 = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)  # a Monday
H = 3_600_000
D = 24 * H
JAN = {"date_from": date(2024, 1, 1), "date_to": date(2024, 1, 3)}


async def test_trends_count_unique_breakdown_and_filters(ctx: Context, project: dict[str, Any]) -> None:
    pid = project["id"]
    await insert(
        ctx,
        pid,
        [
            ("u1", "plant_created", T0 + H, {"strain": "A", "count": 2}),
            ("u1", "plant_created", T0 + 2 * H, {"strain": "A", "count": 5}),
            ("u1", "plant_created", T0 + D, {"strain": "B"}),
            ("u2", "plant_created", T0 + D + H, {"strain": "A"}),
            ("u2", "post_liked", T0 + D + H, {}),
        ],
    )
    async with ctx.db.transaction() as conn:
        await identity.set_traits(conn, pid, "u2", {"tier": "pro"}, device=None, seen_ms=T0, identified=True)
    async with ctx.db.connect() as conn:
        q = queries.TrendsQuery(
            **JAN,
            series=[
                queries.Series(event="plant_created"),
                queries.Series(event="plant_created", math="unique_users"),
                queries.Series(event="$any_event", label="all"),
            ],
        )
        result = await queries.trends(conn, pid, q)
        assert result["buckets"] == ["2024-01-01", "2024-01-02", "2024-01-03"]
        assert [s["data"] for s in result["series"]] == [[2, 2, 0], [1, 2, 0], [2, 3, 0]]
        assert [s["total"] for s in result["series"]] == [4, 2, 5]

        q.series = [queries.Series(event="plant_created")]
        q.breakdown = queries.Breakdown(property="strain")
        broken = await queries.trends(conn, pid, q)
        assert [(s["breakdown_value"], s["data"]) for s in broken["series"]] == [("A", [2, 1, 0]), ("B", [0, 1, 0])]

        q.breakdown = None
        q.filters = [queries.PropertyFilter(property="count", op="gt", value=3)]
        assert (await queries.trends(conn, pid, q))["series"][0]["data"] == [1, 0, 0]
        q.filters = [queries.PropertyFilter(property="tier", scope="user", value="pro")]
        assert (await queries.trends(conn, pid, q))["series"][0]["data"] == [0, 1, 0]
        q.filters = [queries.PropertyFilter(property="strain", op="in", value=["B"])]
        assert (await queries.trends(conn, pid, q))["series"][0]["data"] == [0, 1, 0]

        weekly = queries.TrendsQuery(
            date_from=date(2024, 1, 1),
            date_to=date(2024, 2, 20),
            interval="month",
            series=[queries.Series(event="plant_created")],
        )
        monthly = await queries.trends(conn, pid, weekly)
        assert monthly["buckets"] == ["2024-01-01", "2024-02-01"]
        assert monthly["series"][0]["data"] == [4, 0]


async def test_active_users_from_rollups_and_tail(ctx: Context, project: dict[str, Any]) -> None:
    pid = project["id"]
    await insert(ctx, pid, [("a", "x", T0), ("b", "x", T0 + D), ("a", "y", T0 + 6 * D)])
    await rollups.run_rollup(ctx)
    await insert(ctx, pid, [("c", "x", T0 + 6 * D + H)])  # above the watermark: read from the tail
    async with ctx.db.connect() as conn:
        result = await queries.active_users(
            conn, pid, queries.ActiveUsersQuery(date_from=date(2024, 1, 1), date_to=date(2024, 1, 8))
        )
    assert result["dau"] == [1, 1, 0, 0, 0, 0, 2, 0]
    assert result["wau"] == [1, 2, 2, 2, 2, 2, 3, 3]
    assert result["mau"] == [1, 2, 2, 2, 2, 2, 3, 3]
    assert result["stickiness"][6] == round(2 / 3, 4)


async def test_stickiness_and_top_lists(ctx: Context, project: dict[str, Any]) -> None:
    pid = project["id"]
    await insert(
        ctx,
        pid,
        [
            ("a", "x", T0),
            ("a", "x", T0 + D),
            ("a", "$screen", T0 + D, {}, "Garden"),
            ("b", "x", T0),
            ("b", "$screen", T0, {}, "Garden"),
            ("b", "$screen", T0 + 1, {}, "Feed"),
        ],
    )
    async with ctx.db.connect() as conn:
        sticky = await queries.stickiness(conn, pid, queries.StickinessQuery(**JAN, event="x"))
        top = await queries.top_events(conn, pid, queries.TopQuery(**JAN))
        screens = await queries.top_screens(conn, pid, queries.TopQuery(**JAN))
    assert sticky["histogram"] == [
        {"active_periods": 1, "users": 1},
        {"active_periods": 2, "users": 1},
        {"active_periods": 3, "users": 0},
    ]
    assert top["events"] == [{"event": "$screen", "count": 3, "users": 2}, {"event": "x", "count": 3, "users": 2}]
    assert screens["screens"] == [
        {"screen": "Garden", "views": 2, "users": 2},
        {"screen": "Feed", "views": 1, "users": 1},
    ]


async def test_funnel_window_order_and_breakdown(ctx: Context, project: dict[str, Any]) -> None:
    pid = project["id"]
    a, b, c = "plant_created", "care_task_completed", "diagnosis_requested"
    await insert(
        ctx,
        pid,
        [
            # u1 converts fully within an hour
            ("u1", a, T0 + H, {"medium": "soil"}),
            ("u1", b, T0 + 90 * 60_000),
            ("u1", c, T0 + 2 * H),
            # u2 does step 2 too late (window is 1 day)
            ("u2", a, T0 + H, {"medium": "coco"}),
            ("u2", b, T0 + 3 * D),
            # u3 does step 2 before step 1: only step 1 counts
            ("u3", b, T0),
            ("u3", a, T0 + H, {"medium": "soil"}),
            # u4's second attempt converts to step 2
            ("u4", a, T0, {"medium": "hydro"}),
            ("u4", a, T0 + 2 * D, {"medium": "hydro"}),
            ("u4", b, T0 + 2 * D + H),
            # u5 enters after the date range: ignored
            ("u5", a, T0 + 20 * D),
        ],
    )
    q = funnels.FunnelQuery(
        date_from=date(2024, 1, 1),
        date_to=date(2024, 1, 10),
        steps=[funnels.FunnelStep(event=a), funnels.FunnelStep(event=b), funnels.FunnelStep(event=c)],
        window_value=1,
        window_unit="day",
    )
    async with ctx.db.connect() as conn:
        result = await funnels.funnel(conn, pid, q)
        assert [s["count"] for s in result["steps"]] == [4, 2, 1]
        assert [s["dropped_from_previous"] for s in result["steps"]] == [0, 2, 1]
        assert result["steps"][1]["conversion_from_previous"] == 0.5
        assert result["steps"][2]["conversion_from_first"] == 0.25
        assert result["steps"][1]["median_seconds_from_previous"] == (30 * 60 + 3600) / 2
        assert result["time_to_convert"]["median_seconds"] == 3600
        assert result["conversion_rate"] == 0.25

        q.breakdown = funnels.Breakdown(property="medium")
        broken = await funnels.funnel(conn, pid, q)
        assert {g["value"]: [s["count"] for s in g["steps"]] for g in broken["breakdown"]} == {
            "soil": [2, 1, 1],
            "coco": [1, 0, 0],
            "hydro": [1, 1, 0],
        }
        q.breakdown = None
        q.steps[0].filters = [funnels.PropertyFilter(property="medium", value="soil")]
        assert [s["count"] for s in (await funnels.funnel(conn, pid, q))["steps"]] == [2, 1, 1]


async def test_same_event_steps_need_two_occurrences(ctx: Context, project: dict[str, Any]) -> None:
    pid = project["id"]
    await insert(ctx, pid, [("u1", "post_liked", T0), ("u2", "post_liked", T0), ("u2", "post_liked", T0 + 1)])
    q = funnels.FunnelQuery(
        **JAN, steps=[funnels.FunnelStep(event="post_liked"), funnels.FunnelStep(event="post_liked")]
    )
    async with ctx.db.connect() as conn:
        assert [s["count"] for s in (await funnels.funnel(conn, pid, q))["steps"]] == [2, 1]


async def test_weekly_retention(ctx: Context, project: dict[str, Any]) -> None:
    pid = project["id"]
    w = 7 * D
    await insert(
        ctx,
        pid,
        [
            ("a", "app_opened", T0, {"os": "ios"}),
            ("a", "app_opened", T0 + w),
            ("a", "app_opened", T0 + 3 * w),
            ("b", "app_opened", T0 + D, {"os": "android"}),
            ("b", "app_opened", T0 + 2 * w),
            ("c", "app_opened", T0 + w, {"os": "ios"}),
            ("c", "app_opened", T0 + 2 * w),
        ],
    )
    q = retention.RetentionQuery(
        date_from=date(2024, 1, 1),
        date_to=date(2024, 1, 14),
        start_event="app_opened",
        return_event="app_opened",
        periods=3,
    )
    async with ctx.db.connect() as conn:
        result = await retention.retention(conn, pid, q)
        (group,) = result["groups"]
        assert [(c["cohort"], c["size"]) for c in group["cohorts"]] == [("2024-01-01", 2), ("2024-01-08", 1)]
        assert [p["users"] for p in group["cohorts"][0]["periods"]] == [2, 1, 1, 1]
        assert [p["users"] for p in group["cohorts"][1]["periods"]] == [1, 1, 0, 0]
        q.criterion = "on_or_after"
        after = await retention.retention(conn, pid, q)
        assert [p["users"] for p in after["groups"][0]["cohorts"][0]["periods"]] == [2, 2, 2, 1]
        q.criterion = "on"
        q.breakdown = retention.Breakdown(property="os")
        broken = await retention.retention(conn, pid, q)
        assert [(g["breakdown_value"], [c["size"] for c in g["cohorts"]]) for g in broken["groups"]] == [
            ("ios", [1, 1]),
            ("android", [1, 0]),
        ]
        await rollups.run_rollup(ctx)
        q.breakdown = None
        q.start_event = q.return_event = "$any_event"
        anything = await retention.retention(conn, pid, q)
        assert [p["users"] for p in anything["groups"][0]["cohorts"][0]["periods"]] == [2, 1, 1, 1]


async def test_sessions_and_screen_time(ctx: Context, project: dict[str, Any]) -> None:
    pid = project["id"]
    m = 60_000
    await insert(
        ctx,
        pid,
        [
            ("u1", "$screen", T0, {}, "Garden"),
            ("u1", "$screen", T0 + 2 * m, {}, "Plant"),
            ("u1", "care_task_completed", T0 + 5 * m),
            ("u1", "$screen", T0 + 6 * m, {}, "Garden"),
            ("u1", "$screen", T0 + 60 * m, {}, "Feed"),  # 54 minutes later: a new session
            ("u2", "post_liked", T0 + 10 * m, {}, None, "s-1"),
            ("u2", "post_liked", T0 + 11 * m, {}, None, "s-2"),  # the app started a new session
        ],
    )
    async with ctx.db.connect() as conn:
        result = await behaviour.sessions(conn, pid, behaviour.SessionsQuery(**JAN), 30 * m)
    summary = result["summary"]
    assert summary["sessions"] == 4
    assert summary["users"] == 2
    assert summary["average_events_per_session"] == 7 / 4
    assert summary["bounce_rate"] == 0.75
    times = {r["screen"]: (r["views"], r["total_seconds"]) for r in result["screen_time"]}
    assert times == {"Garden": (2, 120.0), "Plant": (1, 240.0), "Feed": (1, 0.0)}
    assert result["series"][0]["sessions"] == 4


async def test_paths_next_and_previous(ctx: Context, project: dict[str, Any]) -> None:
    pid = project["id"]
    rows = []
    for user, screens in {
        "a": ["Home", "Garden", "Plant"],
        "b": ["Home", "Garden", "Feed"],
        "c": ["Home", "Feed"],
    }.items():
        rows += [(user, "$screen", T0 + i * 1000, {}, s) for i, s in enumerate(screens)]
    await insert(ctx, pid, rows)
    async with ctx.db.connect() as conn:
        nxt = await behaviour.paths(conn, pid, behaviour.PathsQuery(**JAN, anchor="Home", steps=2), 30 * 60_000)
        prev = await behaviour.paths(
            conn, pid, behaviour.PathsQuery(**JAN, anchor="Feed", direction="previous"), 30 * 60_000
        )
    assert nxt["occurrences"] == 3
    assert nxt["top"][0] == {"item": "Garden", "count": 2, "share": round(2 / 3, 4)}
    assert {tuple(p["path"]): p["count"] for p in nxt["paths"]} == {
        ("Home", "Garden", "Plant"): 1,
        ("Home", "Garden", "Feed"): 1,
        ("Home", "Feed"): 1,
    }
    assert {t["item"]: t["count"] for t in prev["top"]} == {"Garden": 1, "Home": 1}


async def test_lifecycle(ctx: Context, project: dict[str, Any]) -> None:
    pid = project["id"]
    await insert(
        ctx,
        pid,
        [
            ("old", "x", T0 - 20 * D),  # active long ago, back on day 2: resurrecting
            ("old", "x", T0 + D),
            ("a", "x", T0),  # new on day 0, returning on day 1, dormant on day 2
            ("a", "x", T0 + D),
            ("b", "x", T0 + 2 * D),  # new on day 2
        ],
    )
    await rollups.run_rollup(ctx)
    async with ctx.db.connect() as conn:
        result = await queries.lifecycle(conn, pid, queries.LifecycleQuery(**JAN, interval="day"))
    assert result["rows"] == [
        {"bucket": "2024-01-01", "new": 1, "returning": 0, "resurrecting": 0, "dormant": 0},
        {"bucket": "2024-01-02", "new": 0, "returning": 1, "resurrecting": 1, "dormant": 0},
        {"bucket": "2024-01-03", "new": 1, "returning": 0, "resurrecting": 0, "dormant": -2},
    ]


async def test_feature_adoption_and_areas(ctx: Context, project: dict[str, Any]) -> None:
    pid = project["id"]
    async with ctx.db.transaction() as conn:
        await plan.install_default_plan(conn, pid)
    await insert(
        ctx,
        pid,
        [
            ("a", "app_opened", T0),
            ("b", "app_opened", T0),
            ("a", "strain_searched", T0 + H, {"query": "haze"}),
            ("a", "app_opened", T0 + D),
            ("b", "strain_viewed", T0 + D, {"strain_id": "s1"}),
            ("b", "post_liked", T0 + D, {"post_id": "p"}),
        ],
    )
    async with ctx.db.connect() as conn:
        adoption = await queries.feature_adoption(
            conn, pid, queries.AdoptionQuery(**JAN, interval="day", feature_area="strain_database")
        )
        areas = await queries.feature_area_usage(conn, pid, queries.DateRange(**JAN))
    assert [(r["active_users"], r["adopted_users"], r["used_in_period"]) for r in adoption["rows"]] == [
        (2, 1, 1),
        (2, 2, 1),
        (0, 0, 0),
    ]
    usage = {a["feature_area"]: (a["count"], a["users"], a["share_of_active_users"]) for a in areas["areas"]}
    assert usage["strain_database"] == (2, 2, 1.0)
    assert usage["community"] == (1, 1, 0.5)
    assert usage["diagnosis"] == (0, 0, 0.0)
