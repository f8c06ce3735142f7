"""The fake camera's control commands, parsed without a camera or a socket."""

from __future__ import annotations

import pytest

from hubruntime.fakecam.cli import parse_fault
from hubruntime.fakecam.control import Command, CommandError, answer, parse_command


@pytest.mark.parametrize(("line", "expected"), [
    ("stall 2", Command("stall", 2.0)),
    ("  stall   1.5 \r\n", Command("stall", 1.5)),
    ("STALL 2", Command("stall", 2.0)),
    ("stall-video 0.25", Command("stall-video", 0.25)),
    ("slow 0.8", Command("slow", 0.8)),
    ("slow 10", Command("slow", 10.0)),
    ("skew 3", Command("skew", 3.0)),
    ("skew -2.5", Command("skew", -2.5)),
    ("skew 0", Command("skew", 0.0)),
    ("drop", Command("drop")),
    ("refuse", Command("refuse")),
    ("restore", Command("restore")),
    ("status", Command("status")),
    ("stall 1e1", Command("stall", 10.0)),
])
def test_parses(line: str, expected: Command) -> None:
    assert parse_command(line) == expected


@pytest.mark.parametrize(("line", "message"), [
    ("", "empty command"),
    ("   ", "empty command"),
    ("jump 2", "unknown command 'jump' (known: stall, stall-video"),
    ("stall", "usage: stall SECONDS"),
    ("stall 1 2", "usage: stall SECONDS"),
    ("stall two", "stall: 'two' is not a number"),
    ("stall 0", "stall: SECONDS must be > 0"),
    ("stall -1", "stall: SECONDS must be > 0"),
    ("stall 7200", "<= 3600"),
    ("stall nan", "must be a finite number"),
    ("stall-video inf", "must be a finite number"),
    ("slow 0", "slow: FACTOR must be > 0"),
    ("slow -0.5", "slow: FACTOR must be > 0"),
    ("slow 1000", "<= 100"),
    ("skew 1e9", "skew: SECONDS must be within"),
    ("skew", "usage: skew SECONDS"),
    ("drop now", "drop takes no argument"),
    ("status please", "status takes no argument"),
])
def test_errors_say_what_is_wrong(line: str, message: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(line)
    assert message in str(info.value)


def test_command_text_is_the_ok_answer() -> None:
    assert str(parse_command("stall 2")) == "stall 2"
    assert str(parse_command("slow 0.80")) == "slow 0.8"
    assert str(parse_command("drop")) == "drop"


@pytest.mark.parametrize(("text", "expected"), [
    ("5:stall 2", (5.0, Command("stall", 2.0))),
    ("0:drop", (0.0, Command("drop"))),
    ("1.5: slow 0.5", (1.5, Command("slow", 0.5))),
])
def test_scheduled_faults(text: str, expected: tuple[float, Command]) -> None:
    assert parse_fault(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("stall 2", "expected AT:COMMAND"),
    ("soon:stall 2", "'soon' is not a number of seconds"),
    ("-1:drop", "AT must be >= 0"),
    ("inf:drop", "AT must be >= 0"),
    ("3:stall", "usage: stall SECONDS"),
])
def test_scheduled_fault_errors(text: str, message: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_fault(text)
    assert message in str(info.value)


class StubCamera:
    """Records the fault calls ``apply_command`` makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None]] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        def call(value: float | None = None) -> int:
            if name == "stall_video" and value == 9:
                raise ValueError("stall-video: the clip has no video track")
            self.calls.append((name, value))
            return 2

        return call

    def status(self) -> dict[str, object]:
        return {"connections": 1}


@pytest.mark.parametrize(("line", "reply", "call"), [
    ("stall 2", "ok stall 2", ("stall", 2.0)),
    ("stall-video 1.5", "ok stall-video 1.5", ("stall_video", 1.5)),
    ("slow 0.8", "ok slow 0.8", ("slow", 0.8)),
    ("skew -3", "ok skew -3", ("skew", -3.0)),
    ("drop", "ok drop 2 client(s)", ("drop", None)),
    ("refuse", "ok refuse", ("refuse", None)),
    ("restore", "ok restore", ("restore", None)),
])
def test_answers_run_the_fault(line: str, reply: str, call: tuple[str, float | None]) -> None:
    cam = StubCamera()
    assert answer(cam, line) == reply  # type: ignore[arg-type]
    assert cam.calls == [call]


def test_answers_status_and_errors_on_one_line() -> None:
    cam = StubCamera()
    assert answer(cam, "status") == 'ok {"connections":1}'  # type: ignore[arg-type]
    assert answer(cam, "stall-video 9") == (  # type: ignore[arg-type]
        "error stall-video: the clip has no video track")
    assert answer(cam, "nope").startswith("error unknown command")  # type: ignore[arg-type]
    assert cam.calls == []
