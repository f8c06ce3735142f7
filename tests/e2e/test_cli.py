"""The command line as a user types it: real subprocesses, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hubruntime.plugins import EXAMPLES


def hub(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hubruntime", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_streams_registry_round_trip_and_redaction(tmp_path: Path) -> None:
    d = str(tmp_path)
    url = "rtsp://admin:hunter2@127.0.0.1:8554/cam"
    r = hub("streams", "add", "cam1", "Front door", url, "--description", "Porch", "--data-dir", d)
    assert r.returncode == 0, r.stderr
    r = hub("streams", "add", "cam1", "Again", url, "--data-dir", d)
    assert r.returncode == 1 and "stream 'cam1' already exists" in r.stderr
    r = hub("streams", "list", "--data-dir", d)
    assert "cam1\tFront door\trtsp://***@127.0.0.1:8554/cam\tPorch" in r.stdout
    r = hub("streams", "info", "cam1", "--data-dir", d)
    info = json.loads(r.stdout)
    assert info["streamName"] == "Front door" and info["rtspUrl"] == "rtsp://***@127.0.0.1:8554/cam"
    for out in (r.stdout, r.stderr):
        assert "hunter2" not in out
    assert hub("streams", "remove", "cam1", "--data-dir", d).returncode == 0
    r = hub("streams", "info", "cam1", "--data-dir", d)
    assert r.returncode == 1 and "no stream 'cam1'" in r.stderr


def test_streams_add_refuses_bad_urls_without_leaking(tmp_path: Path) -> None:
    for url, needle in (("http://u:pw@h/x", "rtsp:// or rtsps://"), ("rtsp://u:pw@/x", "no host"),
                        ("not a url", "white space")):
        r = hub("streams", "add", "c", "n", url, "--data-dir", str(tmp_path))
        assert r.returncode == 1 and needle in r.stderr, r.stderr
        assert "pw" not in r.stderr
    r = hub("streams", "add", "bad id!", "n", "rtsp://h/x", "--data-dir", str(tmp_path))
    assert r.returncode == 1 and "streamId" in r.stderr


def test_plugin_check_examples_and_errors(tmp_path: Path) -> None:
    for name in ("example.eventlog", "example.counters"):
        r = hub("plugin", "check", str(EXAMPLES / name))
        assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    folder = tmp_path / "acme.bad"
    (folder / "scripts").mkdir(parents=True)
    (folder / "config.json").write_text('{"id": "acme.bad", "version": "1", "permissions": []}')
    (folder / "scripts" / "h.lua").write_text("local x = 1\nx = = 2\n")
    (folder / "scripts" / "ok.lua").write_text('local s = require("storage")\n')
    r = hub("plugin", "check", str(folder))
    assert r.returncode == 1
    assert f"{folder}/scripts/h.lua:2:" in r.stderr
    assert f"{folder}/scripts/ok.lua:1: require('storage') is not granted" in r.stderr
    (folder / "config.json").write_text('{"id": "acme.bad"}')
    r = hub("plugin", "check", str(folder))
    assert r.returncode == 1 and "field 'version'" in r.stderr


def test_plugin_run_feeds_events_and_reports_bad_lines(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join([
        json.dumps({"event": "camera_packet_delay", "streamId": "cam1", "gapSecs": 1.5,
                    "track": "video"}),
        "{broken json",
        json.dumps({"event": "camera_packet_delay", "streamId": "cam1", "gapSecs": "x"}),
        json.dumps({"event": "no_such_event", "streamId": "cam1"}),
        json.dumps({"event": "camera_unreachable", "streamId": "cam1", "reason": "dns",
                    "errorMessage": "rtsp://u:topsecret@cam.invalid/x"}),
    ]) + "\n")
    r = hub("plugin", "run", str(EXAMPLES / "example.counters"), "--events", str(events),
            "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 1  # bad lines
    assert f"{events}:2: invalid JSON" in r.stderr
    assert f"{events}:3: camera_packet_delay: field 'gapSecs'" in r.stderr
    assert f"{events}:4:" in r.stderr and "no_such_event" in r.stderr
    assert "storage.set_table(\"counts:cam1\", {\"camera_packet_delay\": 1})" in r.stdout
    assert "[notice] cam1: gap of 1.50 s on video (1 so far)" in r.stdout
    assert "camera_unreachable" in r.stdout
    assert "done: 2 event(s) published, 3 bad line(s), 2 item(s) run, 0 failed" in r.stdout
    assert "topsecret" not in r.stdout + r.stderr
    # storage persisted in --data-dir: a second run continues the counters
    good = tmp_path / "good.jsonl"
    good.write_text(events.read_text().splitlines()[0] + "\n")
    r = hub("plugin", "run", str(EXAMPLES / "example.counters"), "--events", str(good),
            "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    assert "(2 so far)" in r.stdout


def test_plugin_run_reports_script_failures(tmp_path: Path) -> None:
    folder = tmp_path / "acme.err"
    (folder / "scripts").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "id": "acme.err", "version": "1", "permissions": ["cameras"],
        "startup": "scripts/startup"}))
    (folder / "scripts" / "startup.lua").write_text('require("cameras").subscribe("h")\n')
    (folder / "scripts" / "h.lua").write_text(
        "local p = ...\nlocal cameras = require('cameras')\n"
        "cameras.add_camera_stream(p.streamId, 42, 'rtsp://h/x')\n")
    events = tmp_path / "e.jsonl"
    events.write_text(json.dumps({"event": "camera_stream_closed", "streamId": "c"}) + "\n")
    r = hub("plugin", "run", str(folder), "--events", str(events))
    assert r.returncode == 1
    assert ("HUB:acme.err/scripts/h:3: cameras.add_camera_stream: argument #2 'streamName' "
            "must be a string, got number") in r.stderr + r.stdout
