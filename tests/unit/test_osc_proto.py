"""hubruntime.proto.osc: bodies, strict reply parsing, error bodies, the state diff, the poll
scheduler's timing decisions and fingerprints. Pure: no I/O, times are numbers."""

from __future__ import annotations

import json

import pytest

from hubruntime.proto import osc
from hubruntime.proto.backoff import Backoff
from hubruntime.proto.osc import PollScheduler, Step

# -- server side: error bodies, fingerprints, request validation ---------------------------


def test_error_body_has_the_exact_shape_of_the_spec():
    body = osc.error_body("camera.checkForUpdates", "missingParameter", "no fingerprint")
    assert body == {"name": "camera.checkForUpdates", "state": "error",
                    "error": {"code": "missingParameter", "message": "no fingerprint"}}
    assert json.loads(osc.encode(body)) == body


def test_error_codes_and_statuses():
    assert osc.ERROR_CODES == {"unknownCommand", "disabledCommand", "cameraInExclusiveUse",
                               "missingParameter", "invalidParameterName",
                               "invalidParameterValue", "serverError"}
    for code in osc.ERROR_CODES - {"serverError"}:
        assert osc.error_status(code) == 400
    assert osc.error_status("serverError") == 500


def test_fingerprint_is_stable_and_order_independent():
    a = {"batteryLevel": 0.5, "_x": {"b": [1, 2], "a": "é"}, "storageUri": "u"}
    b = {"storageUri": "u", "_x": {"a": "é", "b": [1, 2]}, "batteryLevel": 0.5}
    assert osc.fingerprint(a) == osc.fingerprint(b)
    # a fixed value: the same state must give the same fingerprint in every process and release
    assert osc.fingerprint({}) == "44136fa355b3678a1146ad16"
    assert osc.fingerprint({"n": 1}) == osc.fingerprint({"n": 1.0})  # same JSON number
    assert osc.fingerprint({"n": 1}) != osc.fingerprint({"n": True})
    assert osc.fingerprint({"n": [1, 2]}) != osc.fingerprint({"n": [2, 1]})
    assert osc.fingerprint(a) != osc.fingerprint({**a, "batteryLevel": 0.6})
    fp = osc.fingerprint(a)
    assert isinstance(fp, str) and len(fp) == 24


@pytest.mark.parametrize("bad", [{"n": float("nan")}, {"n": object()}, {1: "x"}])
def test_fingerprint_refuses_non_json(bad):
    with pytest.raises(ValueError):
        osc.fingerprint(bad)


@pytest.mark.parametrize("payload, code", [
    (None, "missingParameter"),
    ([], "missingParameter"),
    ({}, "missingParameter"),
    ({"waitTimeout": 5}, "missingParameter"),  # missing comes before the unknown key
    ({"waitTimeout": 5, "bogus": 1}, "missingParameter"),
    ({"stateFingerprint": "a", "bogus": 1}, "invalidParameterName"),
    ({"stateFingerprint": "a", "bogus": 1, "waitTimeout": "x"}, "invalidParameterName"),
    ({"stateFingerprint": 12}, "invalidParameterValue"),
    ({"stateFingerprint": "a", "waitTimeout": -1}, "invalidParameterValue"),
    ({"stateFingerprint": "a", "waitTimeout": "5"}, "invalidParameterValue"),
    ({"stateFingerprint": "a", "waitTimeout": 2.5}, "invalidParameterValue"),
    ({"stateFingerprint": "a", "waitTimeout": True}, "invalidParameterValue"),
])
def test_check_for_updates_request_errors_in_spec_order(payload, code):
    with pytest.raises(osc.OscRequestError) as info:
        osc.parse_check_for_updates_request(payload)
    err = info.value
    assert err.code == code and err.status == 400
    assert err.body()["name"] == "camera.checkForUpdates"
    assert err.body()["error"]["code"] == code


def test_check_for_updates_request_accepted():
    assert osc.parse_check_for_updates_request({"stateFingerprint": "f"}) == ("f", None)
    assert osc.parse_check_for_updates_request(
        {"stateFingerprint": "f", "waitTimeout": 20}) == ("f", 20)
    assert osc.parse_check_for_updates_request(
        {"stateFingerprint": "f", "waitTimeout": 5.0}) == ("f", 5)
    assert osc.parse_check_for_updates_request(
        {"stateFingerprint": "f", "waitTimeout": None}) == ("f", None)
    with pytest.raises(osc.OscRequestError, match="at most 60"):
        osc.parse_check_for_updates_request({"stateFingerprint": "f", "waitTimeout": 61},
                                            max_wait=60)


def test_server_replies():
    assert osc.state_reply("f1", {"a": 1}) == {"fingerprint": "f1", "state": {"a": 1}}
    assert osc.check_for_updates_reply("f1") == {"stateFingerprint": "f1", "throttleTimeout": 0}


# -- client side: requests and replies ------------------------------------------------------


def test_check_for_updates_body():
    assert osc.check_for_updates_body("f", 20) == {"stateFingerprint": "f", "waitTimeout": 20}
    assert osc.check_for_updates_body("f", 0.2) == {"stateFingerprint": "f", "waitTimeout": 1}
    assert osc.check_for_updates_body("f", None) == {"stateFingerprint": "f"}
    assert osc.REQUEST_HEADERS["X-XSRF-Protected"] == "1"


def test_decode_reply_ok():
    assert osc.decode_reply("/osc/state", 200, b'{"fingerprint":"a","state":{}}') == {
        "fingerprint": "a", "state": {}}


@pytest.mark.parametrize("body", [b"", b"not json", b'{"stateFingerprint": "FIG_', b"[1]",
                                  b'{"n": NaN}', b'{"n": Infinity}', b"\xff\xfe"])
def test_decode_reply_refuses_what_is_not_a_json_object(body):
    with pytest.raises(osc.OscProtocolError, match="/osc/checkForUpdates"):
        osc.decode_reply("/osc/checkForUpdates", 200, body)


def test_decode_reply_error_body():
    body = osc.encode(osc.error_body("camera.checkForUpdates", "serverError", "busy"))
    with pytest.raises(osc.OscErrorReply) as info:
        osc.decode_reply("/osc/checkForUpdates", 503, body)
    err = info.value
    assert (err.status, err.code, err.message, err.name) == (
        503, "serverError", "busy", "camera.checkForUpdates")
    assert str(err) == "/osc/checkForUpdates: HTTP 503 serverError: busy"


def test_decode_reply_ricoh_error_without_name_and_error_in_200():
    ricoh = b'{"error": {"code": "invalidParameterValue", "message": "bad"}, "state": "error"}'
    with pytest.raises(osc.OscErrorReply) as info:
        osc.decode_reply("/osc/state", 400, ricoh)
    assert info.value.code == "invalidParameterValue" and info.value.name is None
    with pytest.raises(osc.OscErrorReply) as info:
        osc.decode_reply("/osc/state", 200, ricoh)
    assert info.value.status == 200 and info.value.code == "invalidParameterValue"


def test_decode_reply_error_status_without_error_body():
    with pytest.raises(osc.OscErrorReply) as info:
        osc.decode_reply("/osc/state", 500, b"<html>\n Internal   Server Error</html>")
    assert info.value.code is None
    assert str(info.value) == "/osc/state: HTTP 500: <html> Internal Server Error</html>"
    with pytest.raises(osc.OscErrorReply, match="x{190}...$"):
        osc.decode_reply("/osc/state", 502, b"x" * 5000)  # bounded in messages


def test_parse_state():
    st = osc.parse_state({"fingerprint": "F1", "state": {"batteryLevel": 1}})
    assert st == osc.OscState("F1", {"batteryLevel": 1})
    with pytest.raises(osc.OscProtocolError, match="fingerprint"):
        osc.parse_state({"state": {}})
    with pytest.raises(osc.OscProtocolError, match="fingerprint"):
        osc.parse_state({"fingerprint": 3, "state": {}})
    with pytest.raises(osc.OscProtocolError, match="'state' must be an object"):
        osc.parse_state({"fingerprint": "F", "state": [1]})


def test_parse_update():
    assert osc.parse_update({"stateFingerprint": "F", "throttleTimeout": 0}) == \
        osc.UpdateCheck("F", 0.0)
    assert osc.parse_update({"stateFingerprint": "F", "throttleTimeout": 60}).throttle == 60.0
    assert osc.parse_update({"stateFingerprint": "F", "throttleTimeout": 0.5}).throttle == 0.5
    assert osc.parse_update({"stateFingerprint": "F"}) == osc.UpdateCheck("F", None)  # Ricoh
    assert osc.parse_update({"stateFingerprint": "F", "throttleTimeout": None}).throttle is None
    for bad in ({}, {"stateFingerprint": None}, {"stateFingerprint": 7}):
        with pytest.raises(osc.OscProtocolError, match="stateFingerprint"):
            osc.parse_update(bad)
    for throttle in (-1, "0", True, [0]):
        with pytest.raises(osc.OscProtocolError, match="throttleTimeout"):
            osc.parse_update({"stateFingerprint": "F", "throttleTimeout": throttle})


def test_parse_info_lenient():
    info = osc.parse_info({"manufacturer": "RICOH", "model": "THETA X", "firmwareVersion": "1.4",
                           "apiLevel": [1, 2], "endpoints": {"httpPort": 80}})
    assert (info.manufacturer, info.model, info.api_level) == ("RICOH", "THETA X", (1, 2))
    assert info.describe() == "RICOH THETA X firmware 1.4, API level 1/2"
    odd = osc.parse_info({"manufacturer": 5, "apiLevel": "2"})
    assert odd.manufacturer == "" and odd.api_level == (1,)
    assert osc.parse_info({}).describe() == "camera, API level 1"


# -- state diff -------------------------------------------------------------------------------


def test_diff_changed_added_removed_sorted():
    old = {"batteryLevel": 0.8, "storageUri": "a", "_gone": 1, "same": "x"}
    new = {"batteryLevel": 0.5, "storageUri": "a", "same": "x", "_new": [1]}
    d = osc.diff_state(old, new)
    assert d.changed == ["_gone", "_new", "batteryLevel"]
    assert d.values == {"_gone": None, "_new": [1], "batteryLevel": 0.5}
    assert d


def test_diff_nested_by_value():
    old = {"_cam": {"a": 1, "b": {"c": [1, 2]}}, "x": [1, {"y": 2}]}
    same = {"x": [1, {"y": 2}], "_cam": {"b": {"c": [1, 2]}, "a": 1}}
    assert not osc.diff_state(old, same)
    assert osc.diff_state(old, same).changed == []
    deeper = {"_cam": {"a": 1, "b": {"c": [1, 3]}}, "x": [1, {"y": 2}]}
    assert osc.diff_state(old, deeper).changed == ["_cam"]
    assert osc.diff_state(old, deeper).values == {"_cam": {"a": 1, "b": {"c": [1, 3]}}}


def test_diff_distinguishes_bool_from_number_not_int_from_float():
    assert osc.diff_state({"f": 1}, {"f": True}).changed == ["f"]
    assert osc.diff_state({"f": 0}, {"f": False}).changed == ["f"]
    assert osc.diff_state({"f": [1]}, {"f": [True]}).changed == ["f"]
    assert osc.diff_state({"f": 1}, {"f": 1.0}).changed == []
    assert osc.diff_state({"f": "1"}, {"f": 1}).changed == ["f"]
    assert osc.diff_state({"f": None}, {"f": 0}).changed == ["f"]
    assert osc.diff_state({"f": {}}, {"f": []}).changed == ["f"]


def test_diff_of_empty_states():
    assert osc.diff_state({}, {}).changed == []
    d = osc.diff_state({}, {"a": 1})
    assert (d.changed, d.values) == (["a"], {"a": 1})


# -- the poll scheduler -----------------------------------------------------------------------


def connected(min_interval=1.0, **kwargs) -> PollScheduler:
    """A scheduler that did info at t=0 and state at t=0.1 (fingerprint F1)."""
    s = PollScheduler(min_interval=min_interval, now=0.0, **kwargs)
    assert s.next() == (Step.INFO, 0.0)
    s.begin(0.0)
    s.info_done(0.05)
    assert s.next() == (Step.STATE, 0.05)
    s.begin(0.05)
    s.state_done(0.1, "F1")
    return s


def test_first_poll_is_at_once_after_the_state():
    s = connected()
    assert s.next() == (Step.POLL, 0.1)
    assert s.fingerprint == "F1"


def test_long_poll_answer_after_hold_repolls_at_once():
    s = connected()
    s.begin(0.1)
    assert s.poll_done(20.1, "F1", 0) is False  # held 20 s, nothing changed
    assert s.next() == (Step.POLL, 20.1)


def test_minimum_interval_imposed_when_camera_answers_at_once_with_throttle_0():
    s = connected(min_interval=1.0)
    t = 0.1
    starts = []
    for _ in range(10):
        step, due = s.next()
        assert step is Step.POLL
        t = max(t, due)
        starts.append(t)
        s.begin(t)
        assert s.poll_done(t + 0.01, "F1", 0) is False
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert all(g == pytest.approx(1.0) for g in gaps)


def test_minimum_interval_also_without_throttle_field():
    s = connected(min_interval=2.0)
    s.begin(0.1)
    s.poll_done(0.2, "F1", None)
    assert s.next() == (Step.POLL, pytest.approx(2.1))


def test_throttle_timeout_honoured_from_the_answer():
    s = connected(min_interval=1.0)
    s.begin(0.1)
    s.poll_done(0.2, "F1", 5)
    assert s.next() == (Step.POLL, pytest.approx(5.2))


def test_throttle_capped():
    s = connected(max_throttle=60.0)
    s.begin(0.1)
    s.poll_done(0.2, "F1", 3600)
    assert s.next() == (Step.POLL, pytest.approx(60.2))


def test_change_fetches_state_at_once_then_polls_no_sooner_than_min_interval():
    s = connected(min_interval=1.0)
    s.begin(0.1)
    assert s.poll_done(0.3, "F2", 0) is True  # a change, answered promptly
    assert s.next() == (Step.STATE, 0.3)
    s.begin(0.3)
    s.state_done(0.35, "F2")
    assert s.fingerprint == "F2"
    assert s.next() == (Step.POLL, pytest.approx(1.1))  # 1 s after the previous poll's start


def test_change_after_a_long_hold_polls_again_at_once():
    s = connected(min_interval=1.0)
    s.begin(0.1)
    assert s.poll_done(7.0, "F2", 0) is True
    s.begin(7.0)
    s.state_done(7.05, "F2")
    assert s.next() == (Step.POLL, 7.05)


def test_throttle_after_change_is_honoured():
    s = connected(min_interval=1.0)
    s.begin(0.1)
    s.poll_done(0.2, "F2", 10)
    assert s.next() == (Step.STATE, 0.2)  # the state is fetched at once regardless
    s.begin(0.2)
    s.state_done(0.3, "F2")
    assert s.next() == (Step.POLL, pytest.approx(10.2))


class FakeBackoff:
    def __init__(self):
        self.calls: list[float] = []

    def next_delay(self, healthy_secs: float = 0.0) -> float:
        self.calls.append(healthy_secs)
        return 7.0


def test_error_backs_off_and_resumes_at_state():
    b = FakeBackoff()
    s = connected(backoff=b)
    s.begin(0.1)
    assert s.failed(0.2) == 7.0
    assert s.next() == (Step.STATE, pytest.approx(7.2))
    assert s.failures == 1
    s.begin(7.2)
    assert s.failed(7.3) == 7.0
    assert s.failures == 2
    assert b.calls[1] == 0.0  # no success between the two failures
    s.begin(14.3)
    s.state_done(14.4, "F1")
    assert s.failures == 0
    assert s.next() == (Step.POLL, 14.4)  # the last poll started long ago


def test_error_before_info_retries_info():
    s = PollScheduler(now=0.0)
    s.begin(0.0)
    assert s.failed(0.1) == 0.5
    assert s.next() == (Step.INFO, pytest.approx(0.6))


def test_default_backoff_doubles_to_a_cap_and_resets_after_a_healthy_minute():
    s = connected()
    delays = []
    t = 1.0
    for _ in range(9):
        s.begin(t)
        delays.append(s.failed(t))
        t = s.next()[1]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    # a healthy minute, measured from the first successful request after the failures
    s.begin(t)
    s.state_done(t + 0.1, "F1")
    for _ in range(3):
        step, due = s.next()
        s.begin(due + 30)
        s.poll_done(due + 30.5, "F1", 0)
    s.begin(t + 100)
    assert s.failed(t + 100) == 0.5


def test_backoff_not_reset_by_a_short_healthy_spell():
    s = connected()
    s.begin(1.0)
    assert s.failed(1.0) == 0.5
    s.begin(2.0)
    s.state_done(2.1, "F1")
    s.begin(3.0)
    assert s.failed(3.0) == 1.0


def test_erroring_camera_is_retried_a_bounded_number_of_times():
    """Over 10 minutes of failures the retries stay few: the cap is 30 s."""
    s = connected()
    t, attempts = 0.2, 0
    while t < 600:
        s.begin(t)
        s.failed(t)
        attempts += 1
        t = s.next()[1]
    assert attempts <= 27


def test_bad_arguments():
    with pytest.raises(ValueError):
        PollScheduler(min_interval=-1)
    with pytest.raises(ValueError):
        osc.check_for_updates_body("f", -1)


def test_the_default_retry_delays_are_jittered_within_half_to_full_base():
    import random

    delays = Backoff(0.5, 30.0, 60.0, rng=random.Random(7))
    bases = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    got = [delays.next_delay() for _ in bases]
    assert all(b / 2 <= d <= b for d, b in zip(got, bases, strict=True)), got
    assert len(set(got)) == len(got)  # jittered, not lockstep
    assert delays.next_delay(healthy_secs=60.0) <= 0.5
    with pytest.raises(ValueError):
        Backoff(0, 1)
