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
