"""Sans-I/O helpers of the HTTP API (hubruntime.proto.api): queries, bodies, times, paging."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

import pytest

from hubruntime.proto.api import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    BodyError,
    EventQuery,
    ParamError,
    envelope,
    format_time,
    log_time,
    page_links,
    parse_bool,
    parse_event_create,
    parse_event_query,
    parse_paging,
    parse_query,
    parse_time,
    parse_trigger,
    parse_type_create,
    parse_type_update,
)

# -- query strings --------------------------------------------------------------------------


def test_parse_query_decodes_percent_and_plus_and_keeps_empty_values():
    assert parse_query(b"a=1&b=x+y&c=%C3%A9t%C3%A9&d=&e") == {
        "a": "1", "b": "x y", "c": "été", "d": "", "e": ""}
    assert parse_query(b"") == {}
    assert parse_query("limit=5") == {"limit": "5"}
    assert parse_query(b"a=1&&b=2") == {"a": "1", "b": "2"}


@pytest.mark.parametrize("raw, param", [
    (b"limit=1&limit=1000", "limit"),
    (b"=1", "query"),
    (b"a=%FF", "a"),
    (b"%FF=1", "%FF"),
    (b"&".join(b"p%d=1" % i for i in range(51)), "query"),
])
def test_parse_query_refuses_ambiguous_or_malformed(raw, param):
    with pytest.raises(ParamError) as info:
        parse_query(raw)
    assert info.value.param == param


def test_parse_bool():
    for text in ("true", "TRUE", "1"):
        assert parse_bool("x", text) is True
    for text in ("false", "False", "0"):
        assert parse_bool("x", text) is False
    with pytest.raises(ParamError, match="x must be true or false"):
        parse_bool("x", "yes")


# -- event listing query --------------------------------------------------------------------


def test_event_query_defaults():
    q = parse_event_query({})
    assert q == EventQuery(limit=DEFAULT_LIMIT, offset=0, newest_first=True)


def test_event_query_every_parameter():
    q = parse_event_query({
        "limit": "50", "offset": "100", "order_by": "time", "events": "motion, sound,motion",
        "start": "2021-09-23T16:30:00", "end": "2021-09-23T19:00:00.5+02:00", "camid": "cam1",
        "include_meta": "true", "include_filemeta_download": "false", "max_id": "77",
        "token": "t",
    })
    assert q.limit == 50 and q.offset == 100 and q.newest_first is False
    assert q.names == ("motion", "sound")
    assert q.start == "2021-09-23T16:30:00.000Z"
    assert q.end == "2021-09-23T17:00:00.500Z"
    assert q.camid == "cam1" and q.include_meta is True and q.max_id == 77


def test_event_query_empty_events_means_no_names():
    assert parse_event_query({"events": ""}).names == ()


@pytest.mark.parametrize("params, param", [
    ({"limit": "abc"}, "limit"),
    ({"limit": "-1"}, "limit"),
    ({"limit": str(MAX_LIMIT + 1)}, "limit"),
    ({"limit": "1.5"}, "limit"),
    ({"offset": "x"}, "offset"),
    ({"order_by": "name"}, "order_by"),
    ({"events": "ok,bad name"}, "events"),
    ({"events": ",".join(f"e{i}" for i in range(101))}, "events"),
    ({"start": "yesterday"}, "start"),
    ({"end": "2021-13-01"}, "end"),
    ({"start": "2021-09-24", "end": "2021-09-23"}, "end"),
    ({"camid": ""}, "camid"),
    ({"include_meta": "maybe"}, "include_meta"),
    ({"include_filemeta_download": "2"}, "include_filemeta_download"),
    ({"max_id": "-3"}, "max_id"),
    ({"aliases": "x"}, "aliases"),
    ({"bogus": "1"}, "bogus"),
])
def test_event_query_errors_name_the_parameter(params, param):
    with pytest.raises(ParamError) as info:
        parse_event_query(params)
    assert info.value.param == param
    assert param in str(info.value)


def test_paging_only_knows_its_parameters():
    assert parse_paging({"limit": "3", "offset": "6"}).limit == 3
    assert parse_paging({"token": "x"}, extra=("token",)).offset == 0
    with pytest.raises(ParamError) as info:
        parse_paging({"order_by": "time"})
    assert info.value.param == "order_by"


# -- times ----------------------------------------------------------------------------------


def test_times_no_zone_is_utc_and_round_trip_through_the_log_form():
    assert parse_time("2021-09-23T16:30:00") == datetime(2021, 9, 23, 16, 30, tzinfo=UTC)
    assert parse_time("2021-09-23T18:30:00+02:00") == datetime(2021, 9, 23, 16, 30, tzinfo=UTC)
    assert parse_time("2021-09-23T16:30:00Z") == datetime(2021, 9, 23, 16, 30, tzinfo=UTC)
    assert parse_time("2021-09-23") == datetime(2021, 9, 23, tzinfo=UTC)
    text = log_time(parse_time("2021-09-23T16:30:00.123456"))
    assert text == "2021-09-23T16:30:00.123Z"
    # The API shows UTC without a suffix, as VXG does.
    assert format_time(text) == "2021-09-23T16:30:00.123"


@pytest.mark.parametrize("bad", ["", "soon", "2021-02-30T00:00:00", 12, None, "x" * 100])
def test_bad_times(bad):
    with pytest.raises(ValueError):
        parse_time(bad)


def test_log_time_orders_as_text():
    a = log_time(parse_time("2021-09-23T09:59:59.999"))
    b = log_time(parse_time("2021-09-23T10:00:00"))
    assert a < b


# -- paging envelope ------------------------------------------------------------------------


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def test_page_links_move_by_limit_and_keep_filters():
    params = {"events": "a,b", "limit": "10", "offset": "10", "token": "t"}
    nxt, prev = page_links("/api/v2/storage/events/", params, limit=10, offset=10, total=35,
                           pin={"max_id": "99"})
    assert nxt is not None and prev is not None
    assert nxt.startswith("/api/v2/storage/events/?")
    assert _query(nxt) == {"events": "a,b", "token": "t", "max_id": "99", "limit": "10",
                           "offset": "20"}
    assert _query(prev)["offset"] == "0"


def test_page_links_at_the_ends():
    assert page_links("/p", {}, limit=10, offset=0, total=5) == (None, None)
    nxt, prev = page_links("/p", {}, limit=10, offset=0, total=10)
    assert nxt is None and prev is None
    nxt, prev = page_links("/p", {}, limit=10, offset=30, total=35)
    assert nxt is None and _query(prev)["offset"] == "20"
    # An offset that is not a multiple of the limit still goes back to 0, not below.
    _, prev = page_links("/p", {}, limit=10, offset=5, total=35)
    assert _query(prev)["offset"] == "0"
    # limit 0 counts only: no next link that would never advance.
    assert page_links("/p", {}, limit=0, offset=0, total=35) == (None, None)


def test_envelope_shape():
    body = envelope([1, 2], limit=2, offset=4, total=9, next_url="/n", previous_url=None)
    assert body == {"meta": {"limit": 2, "next": "/n", "offset": 4, "previous": None,
                             "total_count": 9}, "objects": [1, 2]}


# -- bodies ---------------------------------------------------------------------------------


def test_event_create():
    spec = parse_event_create({"camid": "cam1", "name": "doorbell",
                               "time": "2021-09-23T16:30:00", "meta": {"who": "me"}})
    assert (spec.camid, spec.name, spec.time, spec.meta) == (
        "cam1", "doorbell", "2021-09-23T16:30:00.000Z", {"who": "me"})
    # VXG camera ids are numbers: taken as their text; time and meta are optional.
    spec = parse_event_create({"camid": 7, "name": "x"})
    assert (spec.camid, spec.time, spec.meta) == ("7", None, {})


@pytest.mark.parametrize("body, param", [
    ([], None),
    ({"name": "x"}, "camid"),
    ({"camid": "c"}, "name"),
    ({"camid": True, "name": "x"}, "camid"),
    ({"camid": "c", "name": 5}, "name"),
    ({"camid": "c", "name": "has space"}, "name"),
    ({"camid": "c", "name": "x", "time": "later"}, "time"),
    ({"camid": "c", "name": "x", "meta": []}, "meta"),
    ({"camid": "c", "name": "x", "meta": {"k": 1}}, "meta.k"),
    ({"camid": "c", "name": "x", "meta": {f"k{i}": "v" for i in range(101)}}, "meta"),
    ({"camid": "c", "name": "x", "extra": 1}, "extra"),
])
def test_event_create_errors(body, param):
    with pytest.raises(BodyError) as info:
        parse_event_create(body)
    assert info.value.param == param


def test_trigger_body():
    assert parse_trigger(None).meta == {}
    t = parse_trigger({"time": "2021-01-01T00:00:00Z", "meta": {"a": "b"}})
    assert t.time == "2021-01-01T00:00:00.000Z" and t.meta == {"a": "b"}
    with pytest.raises(BodyError):
        parse_trigger({"name": "x"})


def test_type_create():
    spec = parse_type_create({"name": "custom_event", "notify": True})
    assert spec.notify is True and spec.receive is False  # VXG: receive false on creation
    assert spec.can_be_triggered is False
    spec = parse_type_create({"name": "bell", "caps": {"can_be_triggered": True,
                                                       "can_record": False}})
    assert spec.can_be_triggered is True


@pytest.mark.parametrize("body, param", [
    ({}, "name"),
    ({"name": "x", "notify": "yes"}, "notify"),
    ({"name": "x", "caps": {"can_record": True}}, "caps.can_record"),
    ({"name": "x", "caps": {"can_fly": True}}, "caps.can_fly"),
    ({"name": "x", "caps": {"can_be_triggered": 1}}, "caps.can_be_triggered"),
    ({"name": "x", "custom": False}, "custom"),
    ({"name": "x", "color": "red"}, "color"),
])
def test_type_create_errors(body, param):
    with pytest.raises(BodyError) as info:
        parse_type_create(body)
    assert info.value.param == param


def test_type_update():
    u = parse_type_update({"name": "motion", "notify": True, "record": False, "period": 0},
                          "motion")
    assert (u.notify, u.receive, u.generate_images) == (True, None, None)
    for body, param in [({"name": "other"}, "name"), ({"record": True}, "record"),
                        ({"snapshot": True}, "snapshot"), ({"period": 5}, "period"),
                        ({"receive": "no"}, "receive"), ({"x": 1}, "x")]:
        with pytest.raises(BodyError) as info:
            parse_type_update(body, "motion")
        assert info.value.param == param
