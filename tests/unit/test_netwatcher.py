"""NetworkWatcher with scripted snapshots: what it publishes, keeps sticky, and calls back."""

from __future__ import annotations

import pytest
import trio

from hubruntime.events.bus import EventBus
from hubruntime.netwatch import STICKY_KEY, NetworkWatcher
from hubruntime.proto.netstate import Address, Interface, Snapshot

LO = Interface("lo", 1, True, True, True, (Address("127.0.0.1", 8, 254),))


def state(*addrs: str, up: bool = True) -> Snapshot:
    return Snapshot((LO, Interface("eth0", 2, up, up, False,
                                   tuple(Address(a, 24) for a in addrs))))


class Script:
    """The snapshot the watcher reads next; ``fail`` makes a read raise like the kernel might."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.now = snapshot
        self.fail = False

    def __call__(self) -> Snapshot:
        if self.fail:
            raise OSError(105, "No buffer space available")
        return self.now


def names(box) -> list[str]:
    return [p.name for p in box.get_nowait_batch(100)]


async def test_start_connected_publishes_nothing_then_each_transition_once(autojump_clock):
    bus = EventBus()
    box = bus.subscribe("test")
    script = Script(state("10.0.0.2"))
    seen: list[str] = []
    w = NetworkWatcher(bus, poll_secs=1.0, on_address_change=[seen.append], read_snapshot=script)
    async with trio.open_nursery() as nursery:
        await nursery.start(w.run)
        assert (w.connected, w.address, names(box), bus.sticky_events()) == (
            True, "10.0.0.2", [], [])
        script.now = state("10.0.0.2", up=False)
        await trio.sleep(1.5)  # the poll finds it
        assert names(box) == ["hub_disconnected_from_local_network"]
        assert [p.name for p in bus.sticky_events()] == ["hub_disconnected_from_local_network"]
        assert (w.connected, w.address) == (False, None)
        await trio.sleep(5)
        assert names(box) == []  # no repeats
        script.now = state("10.0.0.7")
        await trio.sleep(1.5)
        assert names(box) == ["hub_connected_to_local_network"]
        assert bus.sticky_events() == [] and seen == ["10.0.0.7"]
        script.now = state("10.0.0.7", "10.0.1.7")
        await trio.sleep(1.5)
        script.now = state("10.0.1.7")
        await trio.sleep(1.5)
        assert names(box) == [] and seen == ["10.0.0.7", "10.0.1.7"]
        assert w.address == "10.0.1.7"
        nursery.cancel_scope.cancel()


async def test_start_disconnected_publishes_it_before_started_and_keeps_it_sticky(
        autojump_clock):
    bus = EventBus()
    box = bus.subscribe("test")
    w = NetworkWatcher(bus, read_snapshot=Script(state(up=False)))
    async with trio.open_nursery() as nursery:
        await nursery.start(w.run)
        published = box.get_nowait_batch(10)
        assert [p.name for p in published] == ["hub_disconnected_from_local_network"]
        assert bus.sticky_events() == published  # the very item, for identity checks
        assert bus.sticky_events()[0] is published[0]
        nursery.cancel_scope.cancel()
    assert STICKY_KEY == "network"


async def test_a_failing_callback_does_not_stop_the_others_and_reads_can_fail(
        autojump_clock, caplog):
    bus = EventBus()
    script = Script(state("10.0.0.2"))
    seen: list[str] = []

    def broken(address: str) -> None:
        raise RuntimeError("boom")

    callbacks = [broken]
    w = NetworkWatcher(bus, poll_secs=0.5, on_address_change=callbacks, read_snapshot=script)
    callbacks.append(seen.append)  # added after construction: the list is kept, not copied
    async with trio.open_nursery() as nursery:
        await nursery.start(w.run)
        script.fail = True
        await trio.sleep(2)
        assert "cannot read the network interfaces" in caplog.text
        assert caplog.text.count("cannot read the network interfaces") == 1  # logged once
        script.fail = False
        script.now = state("10.0.0.3")
        await trio.sleep(1)
        assert seen == ["10.0.0.3"] and "address change callback" in caplog.text
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("poll", [0.2, 1.0])
async def test_poll_interval_bounds_detection(autojump_clock, poll):
    bus = EventBus()
    box = bus.subscribe("test")
    script = Script(state("10.0.0.2"))
    w = NetworkWatcher(bus, poll_secs=poll, read_snapshot=script)
    async with trio.open_nursery() as nursery:
        await nursery.start(w.run)
        script.now = state(up=False)
        start = trio.current_time()
        with trio.fail_after(poll + 0.01):
            while not len(box):
                await trio.sleep(0.01)
        assert trio.current_time() - start <= poll + 0.01
        nursery.cancel_scope.cancel()
