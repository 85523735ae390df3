"""Grouping properties (hypothesis) and the rules' edge cases."""

from __future__ import annotations

import copy
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shipyard.errors.grouping import group, normalize_filename, normalize_function, parameterize

identifiers = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
modules = st.lists(identifiers, min_size=1, max_size=3).map(".".join)


@st.composite
def frames(draw: Any, min_size: int = 1) -> list[dict[str, Any]]:
    count = draw(st.integers(min_size, 8))
    out = []
    for _ in range(count):
        out.append(
            {
                "function": draw(identifiers),
                "module": draw(modules),
                "lineno": draw(st.integers(1, 5000)),
                "colno": draw(st.integers(1, 200)),
                "in_app": draw(st.booleans()),
            }
        )
    out[-1]["in_app"] = True  # at least one app frame
    return out


def exc_event(stack: list[dict[str, Any]], exc_type: str = "TypeError", value: str = "x is None") -> dict[str, Any]:
    return {"exception": {"values": [{"type": exc_type, "value": value, "stacktrace": {"frames": stack}}]}}


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(frames(), st.data())
def test_same_crash_at_other_lines_groups_together(stack: list[dict[str, Any]], data: Any) -> None:
    moved = copy.deepcopy(stack)
    for frame in moved:
        frame["lineno"] = data.draw(st.integers(1, 5000))
        frame["colno"] = data.draw(st.integers(1, 200))
        frame["context_line"] = data.draw(st.text(max_size=30))
    other_value = data.draw(st.text(max_size=40))
    assert group(exc_event(stack)).fingerprint == group(exc_event(moved, value=other_value)).fingerprint


@settings(max_examples=150)
@given(frames(), identifiers)
def test_a_different_in_app_call_path_is_another_issue(stack: list[dict[str, Any]], new_function: str) -> None:
    changed = copy.deepcopy(stack)
    app_frame = next(f for f in reversed(changed) if f["in_app"])
    if normalize_function(new_function) == normalize_function(app_frame["function"]):
        new_function += "_other"
    app_frame["function"] = new_function
    assert group(exc_event(stack)).fingerprint != group(exc_event(changed)).fingerprint


@settings(max_examples=100)
@given(frames(), identifiers, modules)
def test_library_frames_do_not_matter(stack: list[dict[str, Any]], function: str, module: str) -> None:
    with_library = [{"function": function, "module": module, "in_app": False}, *copy.deepcopy(stack)]
    assert group(exc_event(stack)).fingerprint == group(exc_event(with_library)).fingerprint


@settings(max_examples=100)
@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=4), frames(), frames())
def test_an_explicit_fingerprint_wins(fingerprint: list[str], a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    if any(f.strip().replace(" ", "") == "{{default}}" for f in fingerprint):
        return
    first = group({**exc_event(a), "fingerprint": fingerprint})
    second = group({**exc_event(b, exc_type="KeyError"), "fingerprint": fingerprint})
    assert first.fingerprint == second.fingerprint and first.method == "fingerprint"


@settings(max_examples=100)
@given(frames(), st.integers(0, 10**9), st.integers(0, 10**9))
def test_numbers_in_values_and_messages_are_parameterised(stack: list[dict[str, Any]], a: int, b: int) -> None:
    no_stack_a = {"exception": {"values": [{"type": "NotFound", "value": f"user {a} not found"}]}}
    no_stack_b = {"exception": {"values": [{"type": "NotFound", "value": f"user {b} not found"}]}}
    assert group(no_stack_a).fingerprint == group(no_stack_b).fingerprint
    assert (
        group({"message": f"took {a} ms for order {b}"}).fingerprint
        == group({"message": f"took {b} ms for order {a}"}).fingerprint
    )


@settings(max_examples=60)
@given(frames(), st.randoms())
def test_fingerprints_are_stable_under_key_order(stack: list[dict[str, Any]], rnd: random.Random) -> None:
    def shuffled(value: Any) -> Any:
        if isinstance(value, dict):
            items = list(value.items())
            rnd.shuffle(items)
            return {k: shuffled(v) for k, v in items}
        if isinstance(value, list):
            return [shuffled(v) for v in value]
        return value

    event = exc_event(stack)
    result = group(event)
    assert result.fingerprint == group(shuffled(event)).fingerprint
    assert len(result.fingerprint) == 32 and int(result.fingerprint, 16) >= 0


def test_the_fingerprint_of_a_known_event_never_changes() -> None:
    # Changing the algorithm regroups every project's issues; this pins it.
    event = exc_event([{"function": "save", "module": "app.plants", "lineno": 3, "in_app": True}], "ValueError")
    assert group(event).fingerprint == PINNED


PINNED = "e268d81d3699538564601b73388f0238"


def test_default_marker() -> None:
    base = exc_event([{"function": "save", "module": "app.plants", "in_app": True}])
    default = group(base)
    assert group({**base, "fingerprint": ["{{ default }}"]}).fingerprint == default.fingerprint
    split_a = group({**base, "fingerprint": ["{{ default }}", "checkout"]})
    split_b = group({**base, "fingerprint": ["{{default}}", "profile"]})
    assert len({default.fingerprint, split_a.fingerprint, split_b.fingerprint}) == 3
    assert split_a.method == "fingerprint+default"


def test_strategy_order_and_details() -> None:
    assert group(exc_event([{"function": "f", "module": "m", "in_app": True}])).method == "stacktrace"
    assert group({"exception": {"values": [{"type": "E", "value": "v"}]}}).method == "exception"
    assert group({"logentry": {"message": "user %s failed", "params": ["7"]}}).method == "message"
    assert (
        group({"logentry": {"message": "user %s failed", "params": ["7"]}}).fingerprint
        == group({"logentry": {"message": "user %s failed", "params": ["8"]}, "message": "user 8 failed"}).fingerprint
    )
    assert group({}).method == "fallback"
    # The crashed thread's stack when the exception has none (native crashes).
    native = {
        "exception": {"values": [{"type": "SIGSEGV", "mechanism": {"synthetic": True}}]},
        "threads": {
            "values": [
                {
                    "crashed": True,
                    "stacktrace": {"frames": [{"function": "renderRow", "filename": "/app/Row.m", "in_app": True}]},
                }
            ]
        },
    }
    assert group(native).method == "stacktrace"
    # A synthetic type does not split groups.
    other_signal = copy.deepcopy(native)
    other_signal["exception"]["values"][0]["type"] = "SIGBUS"
    assert group(native).fingerprint == group(other_signal).fingerprint
    # Recursion collapses: 3 or 30 identical frames are the same crash.
    rec = [{"function": "walk", "module": "tree", "in_app": True}]
    assert group(exc_event(rec * 3)).fingerprint == group(exc_event(rec * 30)).fingerprint
    # No in_app markers at all: every frame is the app's.
    unmarked = [{"function": "a", "module": "x"}, {"function": "b", "module": "y"}]
    assert group(exc_event(unmarked)).components[0]["frames"] == ["x:a", "y:b"]


def test_normalisation() -> None:
    assert normalize_function("Object.handleClick") == "handleClick"
    assert normalize_function("async fetchPlants") == "fetchPlants"
    assert normalize_function("?") == normalize_function("<anonymous>") == ""
    assert normalize_function("lambda$onCreate$0") == normalize_function("lambda$onCreate$3")
    assert normalize_function("Foo$1.run") == normalize_function("Foo$2.run")
    assert normalize_filename("app:///main.3f2a1b9c.bundle?v=1") == normalize_filename("app:///main.9ab8c7d6.bundle")
    assert normalize_filename("/Users/dev/App/src/Screens/Home.tsx") == "home.tsx"
    assert normalize_filename("[native code]") == ""
    assert parameterize(
        "Mail to ann@example.com at 2024-05-01T10:00:00Z from 10.0.0.1 id "
        "550e8400-e29b-41d4-a716-446655440000 addr 0x7fff5fbff8c8 took 12.5s, code 404"
    ) == ("Mail to <email> at <date> from <ip> id <uuid> addr <hex> took <float>s, code <int>")
    assert parameterize("GET https://api.example.com/plants/7?x=1 failed\n\nline two\nline three") == (
        "GET <url> failed\nline two"
    )
