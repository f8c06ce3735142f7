import logging

import pytest
import trio

from hubruntime.events.bus import EventBus, Mailbox
from hubruntime.events.catalogue import EventValidationError


async def test_fan_out_in_order_with_seq_and_time():
    bus = EventBus(first_seq=41)
    a, b = bus.subscribe("a"), bus.subscribe("b")
    bus.publish("camera_stream_closed", streamId="s", attempt=1)
    bus.publish("hub_connected_to_local_network")
    for box in (a, b):
        items = await box.get_batch(10)
        assert [i.seq for i in items] == [41, 42]
        assert items[0].event == {"event": "camera_stream_closed", "streamId": "s", "attempt": 1}
        assert items[0].time.endswith("Z")
    assert bus.last_seq == 42


async def test_invalid_event_is_refused_and_not_delivered():
    bus = EventBus()
    box = bus.subscribe("a")
    with pytest.raises(EventValidationError, match="gapSecs"):
        bus.publish("camera_packet_delay", streamId="s", gapSecs="slow")
    assert len(box) == 0 and bus.last_seq == 0


async def test_full_mailbox_drops_oldest_counts_and_logs(caplog):
    bus = EventBus()
    slow = bus.subscribe("slow plugin", maxlen=3)
    fast = bus.subscribe("fast", maxlen=100)
    with caplog.at_level(logging.WARNING):
        for i in range(10):
            bus.publish("camera_stream_closed", streamId="s", attempt=i)
    assert slow.dropped == 7 and fast.dropped == 0
    assert [p.event["attempt"] for p in await slow.get_batch(10)] == [7, 8, 9]
    assert len(await fast.get_batch(100)) == 10
    assert any("slow plugin cannot keep up" in r.getMessage() for r in caplog.records)


async def test_get_batch_waits_for_put():
    box = Mailbox("m", 10)
    got = []

    async def consumer():
        got.extend(await box.get_batch(5))

    async with trio.open_nursery() as n:
        n.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        assert not got
        box.put(1)
    assert got == [1]


async def test_accept_filter_and_unsubscribe():
    bus = EventBus()
    box = bus.subscribe("only s2", accept=lambda p: p.event.get("streamId") == "s2")
    bus.publish("camera_stream_closed", streamId="s1", attempt=1)
    bus.publish("camera_stream_closed", streamId="s2", attempt=1)
    bus.unsubscribe(box)
    bus.publish("camera_stream_closed", streamId="s2", attempt=2)
    assert [p.event["attempt"] for p in box.get_nowait_batch(10)] == [1]


async def test_sticky_events_are_kept_replaced_and_cleared_by_key():
    bus = EventBus()
    assert bus.sticky_events() == []
    down = bus.publish("hub_disconnected_from_local_network")
    bus.set_sticky("network", down)
    other = bus.publish("camera_stream_closed", streamId="s", attempt=1)
    bus.set_sticky("other", other)
    assert bus.sticky_events() == [down, other]
    again = bus.publish("hub_disconnected_from_local_network")
    bus.set_sticky("network", again)  # replaced in place
    assert bus.sticky_events() == [again, other]
    bus.set_sticky("network", None)
    bus.set_sticky("missing", None)  # clearing what is not there is fine
    assert bus.sticky_events() == [other]


async def test_mailbox_contains_that_very_item():
    bus = EventBus()
    box = bus.subscribe("a")
    first = bus.publish("hub_connected_to_local_network")
    twin = bus.publish("hub_connected_to_local_network")  # equal content, another event
    box.get_nowait_batch(1)
    assert first not in box and twin in box
