"""PII scrubbing: an event full of secrets goes in; none of them is anywhere in the database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from shipyard.core.context import Context
from shipyard.errors.scrub import FILTERED, Scrubber, luhn_valid, scrub_string
from tests.conftest import admin_headers
from tests.errors.helpers import error_event, event_envelope, post, process

SECRETS = {
    "password": "hunter2-PASSWORD-1",
    "bearer": "sk_live_BEARER2abcdef",
    "cookie_header": "COOKIEHEADER3xyz",
    "cookie": "COOKIEJAR4xyz",
    "query_token": "QSTOKEN5abc",
    "card_spaced": "4111 1111 1111 1111",
    "card_plain": "5500005555555559",
    "api_key_var": "APIKEY6frame",
    "password_var": "FRAMEPASS7word",
    "crumb_token": "CRUMBTOKEN8x",
    "crumb_bearer": "CRUMBBEARER9abcdef",
    "extra_secret": "EXTRASECRET10",
    "project_field": "PLANTCODE11",
    "ip": "203.0.113.77",
    "tag_session": "TAGSESSION12",
    "private_key": "MIIEvAIBADANBgkqhkiG9w0BAQEFAASC",
    "value_token": "VALUETOKEN13",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "form_password": "FORMPASS14",
    "card_number_field": "CARDFIELD15",
}


def secret_event() -> dict[str, Any]:
    s = SECRETS
    return error_event(
        value=f"Invalid token: {s['value_token']}",
        frames=[
            {
                "function": "login",
                "module": "app.auth",
                "lineno": 9,
                "in_app": True,
                "vars": {"api_key": s["api_key_var"], "user_password": s["password_var"], "attempt": 3},
            },
        ],
        user={"id": "user-42", "email": "ann@example.com", "ip_address": s["ip"]},
        tags={"session_id": s["tag_session"], "screen": "Checkout"},
        request={
            "url": f"https://api.example.com/login?token={s['query_token']}&page=2",
            "method": "POST",
            "query_string": f"token={s['query_token']}&page=2",
            "data": {
                "username": "ann",
                "password": s["password"],
                "card_number": s["card_number_field"],
                "note": f"paid with {s['card_spaced']}",
            },
            "headers": {
                "Authorization": f"Bearer {s['bearer']}",
                "Cookie": f"sessionid={s['cookie_header']}",
                "Accept": "application/json",
            },
            "cookies": {"session": s["cookie"]},
            "env": {"REMOTE_ADDR": s["ip"]},
        },
        breadcrumbs={
            "values": [
                {
                    "category": "http",
                    "message": f"GET /me Authorization: Bearer {s['crumb_bearer']}",
                    "data": {"auth_token": s["crumb_token"], "status_code": 200},
                },
                {"category": "ui.click", "message": f"card {s['card_plain']} entered; jwt {s['jwt']}"},
                {"category": "form", "message": f"submitted body=email=a@b.c&password={s['form_password']}"},
            ]
        },
        extra={"secret": s["extra_secret"], "plant_code": s["project_field"], "harmless": "hello-plant"},
        contexts={
            "app": {
                "app_name": "CanaBro",
                "cert": f"-----BEGIN PRIVATE KEY-----\n{s['private_key']}\n-----END PRIVATE KEY-----",
            }
        },
    )


def _database_bytes(ctx: Context) -> bytes:
    path = Path(ctx.settings.resolved_database_url.removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


async def test_no_secret_reaches_the_database(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> None:
    if not ctx.db.is_sqlite:
        pytest.skip("greps the SQLite file")
    headers = admin_headers(project)
    base = f"/api/v1/projects/{project['id']}/errors"
    await client.put(f"{base}/settings", json={"scrub_fields": ["plant_code"], "store_ip": False}, headers=headers)
    event = secret_event()
    assert (await post(client, project, event_envelope(event))).status_code == 200
    # Stored but not processed yet: the raw envelope is sealed, so already nothing readable.
    before = _database_bytes(ctx)
    assert [k for k, v in SECRETS.items() if v.encode() in before] == []
    await process(ctx)
    async with ctx.db.connect() as conn:
        await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    stored = _database_bytes(ctx)
    assert [k for k, v in SECRETS.items() if v.encode() in stored] == []
    # What is not secret survives, so the event is still useful.
    detail = (await client.get(f"{base}/events/{event['event_id']}", headers=headers)).json()
    data = detail["data"]
    assert data["extra"]["harmless"] == "hello-plant" and data["extra"]["secret"] == FILTERED
    assert data["request"]["data"]["username"] == "ann" and data["request"]["data"]["password"] == FILTERED
    assert data["request"]["headers"]["Accept"] == "application/json"
    assert data["request"]["query_string"] == f"token={FILTERED}&page=2"
    assert data["exception"]["values"][0]["stacktrace"]["frames"][0]["vars"]["attempt"] == 3
    assert data["user"] == {"id": "user-42", "email": "ann@example.com"}
    assert data["tags"]["screen"] == "Checkout"
    assert b"hello-plant" in stored


def test_value_rules() -> None:
    assert scrub_string("Authorization: Bearer abc.def-ghi") == f"Authorization: {FILTERED}"
    assert scrub_string("call with Basic dXNlcjpwYXNz") == f"call with Basic {FILTERED}"
    assert scrub_string("a=1&access_token=xyz&b=2") == f"a=1&access_token={FILTERED}&b=2"
    assert scrub_string('{"password": "x"}') == f'{{"password": "{FILTERED}"}}'
    assert scrub_string("paid 4111-1111-1111-1111 ok") == f"paid {FILTERED} ok"
    # Not a card: wrong check digit, or a timestamp.
    assert scrub_string("order 4111 1111 1111 1112") == "order 4111 1111 1111 1112"
    assert scrub_string("at 1700000000000 ms") == "at 1700000000000 ms"
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")


def test_project_fields_safe_fields_and_defaults_off() -> None:
    scrubber = Scrubber(extra_fields=["PlantCode"], safe_fields=["token_count"])
    data = {"plantcode_v2": "x", "token_count": 5, "auth_token": "y", "nested": [["Authorization", "z"]]}
    assert scrubber.mapping(data) == {
        "plantcode_v2": FILTERED,
        "token_count": 5,
        "auth_token": FILTERED,
        "nested": [["Authorization", FILTERED]],
    }
    off = Scrubber(defaults=False, extra_fields=["only_this"])
    assert off.mapping({"password": "p", "only_this": "o"}) == {"password": "p", "only_this": FILTERED}


# --- the whole-document pre-screen ---------------------------------------------------------------

_KEYS = st.sampled_from(
    ["message", "user", "data", "password", "Token", "auth_header", "plantCode", "cookies", "value", "x"]
)
_STRINGS = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "Bearer abcdefgh123",
            "4111 1111 1111 1111",
            "eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl",
            "-----BEGIN RSA PRIVATE KEY-----xyz",
            "api_key=shhh",
            "PlantCode",
            "\u212aey",  # KELVIN SIGN lower-cases to an ASCII k
            "plain text",
            "0f8e7d6c-5b4a-4321-9876-543210fedcba",  # 12 digits in a row, not a card
            "4111111111111112",  # a card's shape with a wrong check digit
        ]
    ),
)
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), _STRINGS),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_KEYS | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(event=st.dictionaries(_KEYS, _JSON, max_size=5), defaults=st.booleans(), escaped=st.booleans())
def test_prescreen_never_changes_the_result(event: dict[str, Any], defaults: bool, escaped: bool) -> None:
    """Skipping the walk for a document the pre-screen calls clean gives the walk's own result."""
    import copy

    import orjson

    from shipyard.errors.scrub import scrub_event

    scrubber = Scrubber(defaults=defaults, extra_fields=["plantcode"])
    raw = orjson.dumps(event)
    if escaped:  # the same document with every non-ASCII character as a \\u escape
        raw = json.dumps(event, ensure_ascii=True).encode()
    walked = scrub_event(copy.deepcopy(event), scrubber)
    screened = scrub_event(copy.deepcopy(event), scrubber, raw)
    assert screened == walked


def test_prescreen_skips_a_clean_crash_and_catches_a_secret() -> None:
    import orjson

    scrubber = Scrubber()
    clean = error_event(user={"id": "u-1"}, extra={"screen": "Checkout"})
    assert not scrubber.may_need_scrubbing(orjson.dumps(clean))
    for dirty in ({"extra": {"pwd": "x"}}, {"message": "paid 4111111111111111"}, {"tags": {"a": "\\u0074oken"}}):
        assert scrubber.may_need_scrubbing(orjson.dumps({**clean, **dirty}))
    assert Scrubber(extra_fields=["plant"]).may_need_scrubbing(b'{"PLANT_id": 1}')
