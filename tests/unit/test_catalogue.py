"""Tests of the event catalogue (hubruntime.events.catalogue).

The expected events below are transcribed from cameras-api.md ("Events") and protocols.md §3.3
by hand, not derived from the module, so that a change to either side shows up as a failure.
"""

import ast
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from hubruntime.events import catalogue
from hubruntime.events.catalogue import (
    CATALOGUE,
    EventType,
    EventValidationError,
    Field,
    UnknownEventError,
    describe,
    from_notification,
    get,
    make_event,
    to_json,
    validate,
)

# name -> {field: (type, required)}, streamId included; from cameras-api.md.
HUB_EVENTS: dict[str, dict[str, tuple[str, bool]]] = {
    "live_rtsp_stream_started": {"streamId": ("string", True), "localRtspUrl": ("string", True)},
    "live_rtsp_stream_stopped": {"streamId": ("string", True), "errorMessage": ("string", False)},
    "live_rtsp_stream_updated": {"streamId": ("string", True), "localRtspUrl": ("string", True)},
    "stream_snapshotted": {
        "streamId": ("string", True),
        "snapshotId": ("string", True),
        "cloudStorageKey": ("table", True),
        "capturedAt": ("string", False),
    },
    "stream_snapshot_error": {
        "streamId": ("string", True),
        "snapshotId": ("string", True),
        "errorMessage": ("string", True),
    },
    "audio_stream_started": {"streamId": ("string", True), "user_data": ("any", False)},
    "audio_stream_stopped": {"streamId": ("string", True), "user_data": ("any", False)},
    "audio_stream_error": {
        "streamId": ("string", True),
        "errorMessage": ("string", True),
        "user_data": ("any", False),
    },
    "making_video_particle_failed": {
        "streamId": ("string", True),
        "errorMessage": ("string", True),
    },
    "camera_accumulated_delay": {"streamId": ("string", True), "delaySecs": ("number", False)},
    "camera_packet_delay": {
        "streamId": ("string", True),
        "gapSecs": ("number", False),
        "track": ("string", False),
    },
    "camera_unreachable": {
        "streamId": ("string", True),
        "reason": ("string", False),
        "errorMessage": ("string", False),
    },
    "camera_stream_closed": {"streamId": ("string", True), "attempt": ("integer", False)},
    "cloud_tunnel_rejected": {"streamId": ("string", True), "errorMessage": ("string", False)},
    "cloud_tunnel_established": {"streamId": ("string", True), "remoteRtspUrl": ("string", False)},
    # ours (issue 5): the OSC long-poll client's change notice
    "osc_state_changed": {
        "streamId": ("string", True),
        "source": ("string", True),
        "fingerprint": ("string", True),
        "changed": ("array", True),
        "state": ("table", True),
    },
    "hub_connected_to_local_network": {},
    "hub_disconnected_from_local_network": {},
}

# name -> payload fields with their types; from protocols.md §3.3 (all optional).
CAMERA_EVENTS: dict[str, dict[str, str]] = {
    "recording_started": {"recording_active": "boolean"},
    "recording_stopped": {},
    "tag_created": {
        "id": "string",
        "offset_secs": "number",
        "highlight_offset_secs": "number",
        "highlight_length_secs": "number",
        "tag_button": "boolean",
        "tag_mobile": "boolean",
        "tag_remote": "boolean",
        "max_speed_mps": "number",
        "max_acceleration": "number",
        "max_deceleration": "number",
        "max_g_force": "number",
        "max_vertical_speed_mps": "number",
        "max_heartrate_bpm": "integer",
        "max_rotation": "integer",
        "delivered_offset_secs": "number",
        "delivered_length_secs": "number",
    },
    "photo_captured": {},
    "memory_low": {"available_bytes": "integer"},
    "memory_error": {},
    "wifi_stopped": {"wifi_active": "boolean"},
    "transcoding_progress": {"progress_pct": "integer"},
    "viewfinder_started": {"viewfinder_active": "boolean"},
    "viewfinder_stopped": {"viewfinder_active": "boolean"},
    "shutting_down": {
        "battery_critical": "boolean",
        "user_initiated": "boolean",
        "overtemperature_shutdown": "boolean",
    },
}

CAMERA_COMMON = {
    "source": ("string", True),
    "streamId": ("string", False),
    "items": ("array", False),
    "value": ("any", False),
}

KEY = {"uuid": "3f2a", "key": "snapshots/cam1/0001.jpg"}


def _fields(name: str) -> dict[str, tuple[str, bool]]:
    return {f.name: (f.type, f.required) for f in CATALOGUE[name].fields}


# --------------------------------------------------------------------------------------------
# Contents


def test_catalogue_holds_exactly_the_documented_events() -> None:
    assert set(CATALOGUE) == set(HUB_EVENTS) | set(CAMERA_EVENTS)
    assert [n for n, et in CATALOGUE.items() if et.origin == "hub"] == list(HUB_EVENTS)
    assert [n for n, et in CATALOGUE.items() if et.origin == "camera"] == list(CAMERA_EVENTS)


@pytest.mark.parametrize("name", list(HUB_EVENTS))
def test_hub_event_fields(name: str) -> None:
    etype = get(name)
    assert etype.name == name
    assert etype.origin == "hub"
    assert etype.open is False
    assert etype.doc
    assert _fields(name) == HUB_EVENTS[name]
    assert etype.stream_scoped is ("streamId" in HUB_EVENTS[name])


def test_network_events_have_no_fields_and_no_stream() -> None:
    for name in ("hub_connected_to_local_network", "hub_disconnected_from_local_network"):
        assert CATALOGUE[name].fields == ()
        assert CATALOGUE[name].stream_scoped is False
        assert make_event(name) == {"event": name}


@pytest.mark.parametrize("name", list(CAMERA_EVENTS))
def test_camera_notification_fields(name: str) -> None:
    etype = get(name)
    assert etype.origin == "camera"
    assert etype.open is True
    assert etype.stream_scoped is False
    expected = dict(CAMERA_COMMON) | {f: (t, False) for f, t in CAMERA_EVENTS[name].items()}
    assert _fields(name) == expected


def test_catalogue_is_read_only() -> None:
    with pytest.raises(TypeError):
        CATALOGUE["x"] = CATALOGUE["camera_unreachable"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        CATALOGUE["camera_unreachable"].name = "y"  # type: ignore[misc]


def test_declarations_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown type"):
        Field("x", "float")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stream_scoped"):
        EventType("e", (Field("streamId", "string"),), "hub", True)
    with pytest.raises(ValueError, match="duplicate"):
        EventType("e", (Field("a", "string"), Field("a", "number")), "hub", False)


def test_module_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(catalogue.__file__).read_text(encoding="utf-8"))
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0
            modules.add((node.module or "").split(".")[0])
    assert "hubruntime" not in modules
    assert modules <= sys.stdlib_module_names


# --------------------------------------------------------------------------------------------
# make_event and validate


def test_make_event_builds_a_flat_validated_table() -> None:
    event = make_event("camera_packet_delay", streamId="cam1", gapSecs=1.5, track="video")
    assert event == {
        "event": "camera_packet_delay",
        "streamId": "cam1",
        "gapSecs": 1.5,
        "track": "video",
    }
    assert next(iter(event)) == "event"
    snap = make_event(
        "stream_snapshotted",
        streamId="c",
        snapshotId="s1",
        cloudStorageKey=KEY,
        capturedAt="2024-05-01T10:00:00Z",
    )
    validate(snap)
    assert make_event("camera_stream_closed", streamId="c", attempt=3)["attempt"] == 3
    assert make_event("camera_accumulated_delay", streamId="c", delaySecs=7)["delaySecs"] == 7


def test_make_event_drops_none_for_optional_fields() -> None:
    event = make_event("live_rtsp_stream_stopped", streamId="c", errorMessage=None)
    assert event == {"event": "live_rtsp_stream_stopped", "streamId": "c"}
    event = make_event("audio_stream_started", streamId="c", user_data=None)
    assert event == {"event": "audio_stream_started", "streamId": "c"}


def test_make_event_keeps_none_for_required_and_unknown_fields() -> None:
    with pytest.raises(EventValidationError, match="stream_snapshot_error: field 'errorMessage'"):
        make_event("stream_snapshot_error", streamId="c", snapshotId="s", errorMessage=None)
    with pytest.raises(EventValidationError, match="unknown field 'errormessage'"):
        make_event("live_rtsp_stream_stopped", streamId="c", errormessage=None)


def test_make_event_refuses_an_event_keyword() -> None:
    with pytest.raises(EventValidationError, match="'event'"):
        make_event("cloud_tunnel_established", streamId="c", event="other")


def test_any_field_accepts_json_values() -> None:
    for data in ({"a": [1, 2.5, None, True, "x"]}, [1, 2], "x", 3, False):
        assert make_event("audio_stream_error", streamId="c", errorMessage="e", user_data=data)


BAD_EVENTS: list[tuple[dict[str, Any], str, str, list[str]]] = [
    # (event, event name, field, other words the message must contain)
    (
        {"event": "camera_packet_delay", "streamId": "c", "gapSecs": "x"},
        "camera_packet_delay",
        "gapSecs",
        ["must be a number", "got string 'x'"],
    ),
    (
        {"event": "camera_packet_delay", "streamId": "c", "gapSecs": True},
        "camera_packet_delay",
        "gapSecs",
        ["must be a number", "got boolean True"],
    ),
    (
        {"event": "camera_packet_delay", "streamId": "c", "gapSecs": math.nan},
        "camera_packet_delay",
        "gapSecs",
        ["must be a number", "nan"],
    ),
    (
        {"event": "camera_stream_closed", "streamId": "c", "attempt": 2.0},
        "camera_stream_closed",
        "attempt",
        ["must be an integer", "got number 2.0"],
    ),
    (
        {"event": "camera_stream_closed", "streamId": "c", "attempt": False},
        "camera_stream_closed",
        "attempt",
        ["must be an integer", "got boolean False"],
    ),
    (
        {"event": "camera_stream_closed", "streamId": 7},
        "camera_stream_closed",
        "streamId",
        ["must be a string", "got integer 7"],
    ),
    (
        {"event": "camera_stream_closed"},
        "camera_stream_closed",
        "streamId",
        ["is required", "string", "got nothing"],
    ),
    (
        {"event": "live_rtsp_stream_stopped", "streamId": "c", "errorMessage": None},
        "live_rtsp_stream_stopped",
        "errorMessage",
        ["must be a string", "got null"],
    ),
    (
        {"event": "camera_packet_delay", "streamId": "c", "track": "subtitle"},
        "camera_packet_delay",
        "track",
        ["'video', 'audio'", "got string 'subtitle'"],
    ),
    (
        {"event": "camera_unreachable", "streamId": "c", "reason": "gone"},
        "camera_unreachable",
        "reason",
        ["'refused'", "'protocol'", "got string 'gone'"],
    ),
    (
        {"event": "camera_packet_delay", "streamId": "c", "gapSec": 1.0},
        "camera_packet_delay",
        "gapSec",
        ["unknown field", "did you mean 'gapSecs'"],
    ),
    (
        {"event": "hub_connected_to_local_network", "streamId": "c"},
        "hub_connected_to_local_network",
        "streamId",
        ["unknown field"],
    ),
    (
        {"event": "stream_snapshotted", "streamId": "c", "snapshotId": "s", "cloudStorageKey": "k"},
        "stream_snapshotted",
        "cloudStorageKey",
        ["must be a table", "got string 'k'"],
    ),
    (
        {
            "event": "stream_snapshotted",
            "streamId": "c",
            "snapshotId": "s",
            "cloudStorageKey": {"uuid": "u"},
        },
        "stream_snapshotted",
        "cloudStorageKey",
        ["uuid=<string>, key=<string>"],
    ),
    (
        {"event": "audio_stream_started", "streamId": "c", "user_data": {"s": {1, 2}}},
        "audio_stream_started",
        "user_data",
        ["JSON", "set", "user_data.s"],
    ),
    (
        {"event": "audio_stream_started", "streamId": "c", "user_data": {1: "a"}},
        "audio_stream_started",
        "user_data",
        ["JSON", "non-string key 1"],
    ),
    (
        {"event": "memory_low", "source": "cam", "available_bytes": "lots"},
        "memory_low",
        "available_bytes",
        ["must be an integer", "got string 'lots'"],
    ),
    (
        {"event": "memory_low", "source": 3},
        "memory_low",
        "source",
        ["must be a string", "got integer 3"],
    ),
    (
        {"event": "memory_low"},
        "memory_low",
        "source",
        ["is required", "got nothing"],
    ),
    (
        {"event": "recording_stopped", "source": "cam", "items": {"id": "x"}},
        "recording_stopped",
        "items",
        ["must be an array", "got table"],
    ),
    (
        {"event": "tag_created", "source": "cam", "extra": object()},
        "tag_created",
        "extra",
        ["JSON", "object"],
    ),
]


@pytest.mark.parametrize(("event", "name", "field", "words"), BAD_EVENTS)
def test_validation_errors_name_event_and_field(
    event: dict[str, Any], name: str, field: str, words: list[str]
) -> None:
    with pytest.raises(EventValidationError) as info:
        validate(event)
    message = str(info.value)
    assert message.startswith(f"{name}: ")
    assert f"'{field}'" in message
    for word in words:
        assert word in message
    assert info.value.event == name
    assert info.value.field == field


def test_example_message_from_the_brief() -> None:
    with pytest.raises(EventValidationError) as info:
        make_event("camera_packet_delay", streamId="c", gapSecs="x")
    assert (
        str(info.value) == "camera_packet_delay: field 'gapSecs' must be a number, got string 'x'"
    )


def test_validate_rejects_tables_without_a_name() -> None:
    with pytest.raises(EventValidationError, match="'event'.*got nothing"):
        validate({"streamId": "c"})
    with pytest.raises(EventValidationError, match="'event'.*got integer 3"):
        validate({"event": 3})
    with pytest.raises(EventValidationError, match="must be a table"):
        validate(["camera_unreachable"])  # type: ignore[arg-type]


def test_unknown_hub_event_raises_unknown_event_error() -> None:
    for call in (
        lambda: get("camera_unreachble"),
        lambda: make_event("camera_unreachble", streamId="c"),
        lambda: validate({"event": "camera_unreachble", "streamId": "c"}),
    ):
        with pytest.raises(UnknownEventError) as info:
            call()
        assert isinstance(info.value, KeyError)
        assert "'camera_unreachble'" in str(info.value)
        assert "did you mean 'camera_unreachable'" in str(info.value)
    with pytest.raises(UnknownEventError):
        get(None)  # type: ignore[arg-type]


def test_open_events_allow_extra_fields_and_check_declared_ones() -> None:
    validate({"event": "memory_low", "source": "cam", "available_bytes": 10, "new_field": [1]})
    validate({"event": "tag_created", "source": "cam", "streamId": "c", "max_g_force": 2})
    with pytest.raises(EventValidationError, match="tag_created: field 'tag_button'"):
        validate({"event": "tag_created", "source": "cam", "tag_button": "yes"})


def test_unknown_camera_notification_checks_only_event_and_source() -> None:
    validate({"event": "battery_swapped", "source": "cam", "anything": {1, 2}})
    with pytest.raises(EventValidationError, match="battery_swapped: field 'source'"):
        validate({"event": "battery_swapped", "source": None})


# --------------------------------------------------------------------------------------------
# from_notification


def test_object_payload_merges_into_the_table() -> None:
    event = from_notification(
        "bandit", "memory_low", {"available_bytes": 104857600}, stream_id="cam1"
    )
    assert event == {
        "event": "memory_low",
        "source": "bandit",
        "streamId": "cam1",
        "available_bytes": 104857600,
    }


def test_array_payload_becomes_items() -> None:
    videos = [{"id": "v1", "size_bytes": 123, "length_secs": 9.5, "mode": "normal"}]
    event = from_notification("bandit", "recording_stopped", videos)
    assert event == {"event": "recording_stopped", "source": "bandit", "items": videos}
    assert isinstance(from_notification("b", "photo_captured", ({"id": "p"},))["items"], list)


@pytest.mark.parametrize("value", ["text", 42, 2.5, True])
def test_scalar_payload_becomes_value(value: object) -> None:
    event = from_notification("bandit", "memory_error", value)
    assert event == {"event": "memory_error", "source": "bandit", "value": value}


def test_no_payload_adds_nothing() -> None:
    event = from_notification("bandit", "memory_error", None)
    assert event == {"event": "memory_error", "source": "bandit"}
    assert "streamId" not in event


def test_payload_cannot_overwrite_event_source_or_stream() -> None:
    payload = {
        "event": "camera_unreachable",
        "source": "forged",
        "streamId": "other",
        "recording_active": True,
    }
    event = from_notification("bandit", "recording_started", payload, stream_id="cam1")
    assert event == {
        "event": "recording_started",
        "source": "bandit",
        "streamId": "cam1",
        "recording_active": True,
    }
    without_stream = from_notification("bandit", "recording_started", payload)
    assert "streamId" not in without_stream


def test_shutting_down_flags_default_to_false() -> None:
    flags = ("battery_critical", "user_initiated", "overtemperature_shutdown")
    event = from_notification("bandit", "shutting_down", {"user_initiated": True})
    assert {f: event[f] for f in flags} == {
        "battery_critical": False,
        "user_initiated": True,
        "overtemperature_shutdown": False,
    }
    for payload in (None, {}, "now"):
        event = from_notification("bandit", "shutting_down", payload)
        assert all(event[f] is False for f in flags)
    with pytest.raises(EventValidationError, match="shutting_down: field 'battery_critical'"):
        from_notification("bandit", "shutting_down", {"battery_critical": 1})


def test_unknown_notification_is_accepted_as_open_camera_event() -> None:
    event = from_notification("bandit", "gnss_fixed", {"gnss_fix": True}, stream_id="c")
    assert event == {"event": "gnss_fixed", "source": "bandit", "streamId": "c", "gnss_fix": True}
    assert from_notification("bandit", "beeped", [1]) == {
        "event": "beeped",
        "source": "bandit",
        "items": [1],
    }


def test_notification_payload_is_type_checked() -> None:
    with pytest.raises(EventValidationError, match="transcoding_progress: field 'progress_pct'"):
        from_notification("bandit", "transcoding_progress", {"progress_pct": "50%"})


def test_camera_cannot_pose_as_a_hub_event() -> None:
    with pytest.raises(EventValidationError, match="camera_unreachable: .*hub event"):
        from_notification("bandit", "camera_unreachable", {"streamId": "c"})


# --------------------------------------------------------------------------------------------
# Serialisation and listing


def test_to_json_round_trip_is_compact_and_keeps_unicode() -> None:
    event = make_event(
        "audio_stream_error",
        streamId="cam1",
        errorMessage="caméra injoignable",
        user_data={"room": "séjour", "ids": [1, 2]},
    )
    text = to_json(event)
    assert json.loads(text) == event
    assert "caméra" in text and "\\u" not in text
    assert ", " not in text and ": " not in text
    notification = from_notification("bandit", "recording_stopped", [{"id": "v", "len": 9.5}])
    assert json.loads(to_json(notification)) == notification


def test_to_json_refuses_non_finite_numbers() -> None:
    with pytest.raises(ValueError):
        to_json({"event": "camera_packet_delay", "streamId": "c", "gapSecs": math.inf})


def test_describe_is_json_and_lists_every_event() -> None:
    listing = describe()
    assert json.loads(json.dumps(listing)) == listing
    assert [entry["name"] for entry in listing] == list(HUB_EVENTS) + list(CAMERA_EVENTS)
    for entry in listing:
        assert set(entry) == {"name", "origin", "streamScoped", "doc", "fields"}
        for field in entry["fields"]:
            assert set(field) == {"name", "type", "required", "doc"}
    by_name = {entry["name"]: entry for entry in listing}
    delay = by_name["camera_packet_delay"]
    assert delay["origin"] == "hub" and delay["streamScoped"] is True
    assert {f["name"]: (f["type"], f["required"]) for f in delay["fields"]} == HUB_EVENTS[
        "camera_packet_delay"
    ]
    assert "`video`" in next(f["doc"] for f in delay["fields"] if f["name"] == "track")
    assert by_name["shutting_down"]["origin"] == "camera"
    listing[0]["fields"].clear()
    assert describe()[0]["fields"], "describe() must return fresh data"


def test_text_with_a_lone_surrogate_is_refused_where_the_event_is_made() -> None:
    """``json.loads('"\\ud800"')`` gives text that cannot be encoded as UTF-8; such an event
    once passed validation and then broke the plugin feed at encoding time."""
    bad = json.loads('"\\ud800"')
    with pytest.raises(EventValidationError, match="lone surrogate"):
        from_notification("backchannel", "memory_low", {"note": bad})
    with pytest.raises(EventValidationError, match="lone surrogate"):
        from_notification("backchannel", "memory_low", {bad: 1})
    assert from_notification("backchannel", "memory_low", {"note": "é✓"})["note"] == "é✓"
