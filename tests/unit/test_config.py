from pathlib import Path

import pytest

from hubruntime.config import ConfigError, load_config


def test_defaults_work_without_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.delenv("HUBRUNTIME_DATA_DIR", raising=False)
    cfg = load_config()
    assert cfg.data_dir == tmp_path / "hubruntime"
    assert cfg.health.packet_delay_secs == 1.0
    assert cfg.health.accumulated_delay_secs == 5.0
    assert cfg.rtsp.port == 5554
    assert cfg.lua.wall_budget_secs == 2.0


def test_file_and_overrides(tmp_path):
    f = tmp_path / "hub.toml"
    f.write_text('data_dir = "/x"\nplugin_dirs = ["/p"]\n[health]\npacket_delay_secs = 2\n'
                 '[lua]\nmax_memory_mb = 8\n')
    cfg = load_config(f, data_dir=tmp_path / "d", plugin_dirs=(Path("/q"),))
    assert cfg.data_dir == tmp_path / "d"
    assert cfg.plugin_dirs == (Path("/p"), Path("/q"))
    assert cfg.health.packet_delay_secs == 2.0 and isinstance(cfg.health.packet_delay_secs, float)
    assert cfg.lua.max_memory_mb == 8


@pytest.mark.parametrize("text, needle", [
    ("[health]\npacket_delay = 1\n", "unknown key 'packet_delay'"),
    ("[lua]\nmax_memory_mb = 'big'\n", "'max_memory_mb' must be an integer"),
    ("[health]\npacket_delay_secs = 'x'\n", "'packet_delay_secs' must be a number"),
    ("colour = 1\n", "unknown key 'colour'"),
    ("[health\n", "hub.toml"),
])
def test_bad_files_name_the_key(tmp_path, text, needle):
    f = tmp_path / "hub.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        load_config(f)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")


def test_client_interface_sections_as_the_issue_spells_them(tmp_path):
    f = tmp_path / "hub.toml"
    f.write_text('''
[api]
listen = "127.0.0.1:8080"
[[api.tokens]]
token = "scoped"
camera = "588b7eb528b12d03be86f36f"
[[api.tokens]]
token = "all"
[backchannel_server]
listen = "127.0.0.1:0"
[[backchannel]]
stream_id = "588b7eb528b12d03be86f36f"
status_url = "http://127.0.0.1:9000/api/2/status"
[[osc]]
stream_id = "cam2"
url = "http://127.0.0.1:9001"
''')
    cfg = load_config(f)
    assert cfg.api.listen == "127.0.0.1:8080"
    assert [(t.token, t.camera) for t in cfg.api.tokens] == [
        ("scoped", "588b7eb528b12d03be86f36f"), ("all", "")]
    assert cfg.backchannel_server.listen == "127.0.0.1:0"
    assert [(b.stream_id, b.status_url) for b in cfg.backchannel] == [
        ("588b7eb528b12d03be86f36f", "http://127.0.0.1:9000/api/2/status")]
    assert [(o.stream_id, o.url) for o in cfg.osc] == [("cam2", "http://127.0.0.1:9001")]
    default = load_config()
    assert default.api.listen == "127.0.0.1:8080" and default.api.tokens == ()
    assert default.backchannel == () and default.osc == ()


@pytest.mark.parametrize("text, needle", [
    ('[[backchannel]]\nstream_id = "a"\n', "missing key(s) 'status_url'"),
    ('[[osc]]\nstream_id = "a"\nurl = "http://x"\nport = 1\n', "unknown key 'port'"),
    ('[[api.tokens]]\ncamera = "a"\n', "missing key(s) 'token'"),
    ('[[api.tokens]]\ntoken = ""\n', "may not be empty"),
    ('backchannel = 3\n', "array of tables"),
])
def test_client_interface_config_errors_are_clear(tmp_path, text, needle):
    f = tmp_path / "hub.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=None) as exc:
        load_config(f)
    assert needle in str(exc.value)


def test_a_cloud_relay_needs_a_key_and_known_hosts(tmp_path):
    f = tmp_path / "hub.toml"
    f.write_text('[cloud]\nhost = "relay.example.net"\nuser = "hub"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    assert "key_file and known_hosts" in str(exc.value)
    f.write_text('[cloud]\nhost = "relay.example.net"\nkey_file = "/k"\nknown_hosts = "/kh"\n'
                 '[network]\npoll_secs = 0.5\n')
    cfg = load_config(f)
    assert (cfg.cloud.host, cfg.cloud.port, cfg.cloud.remote_port) == ("relay.example.net", 22, 0)
    assert cfg.network.poll_secs == 0.5
    assert load_config().cloud.host == ""  # no relay by default: no tunnel, no events
