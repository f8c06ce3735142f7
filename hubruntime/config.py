"""Hub configuration: one TOML file mapped onto frozen dataclasses.

Every setting has a default that works, so ``hubruntime run`` needs no file at all. Unknown keys
are an error naming the key, because a typo in a threshold would otherwise be silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


def default_data_dir() -> Path:
    """Per-user state folder (XDG), overridable by ``HUBRUNTIME_DATA_DIR`` or ``--data-dir``."""
    env = os.environ.get("HUBRUNTIME_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "hubruntime"


@dataclass(frozen=True)
class HealthConfig:
    packet_delay_secs: float = 1.0
    accumulated_delay_secs: float = 5.0
    backoff_initial_secs: float = 0.5
    backoff_max_secs: float = 30.0
    backoff_reset_after_secs: float = 60.0


@dataclass(frozen=True)
class RtspConfig:
    port: int = 5554
    bind: str = "0.0.0.0"
    internal_port: int = 0  # 0: pick a free loopback port for the internal publish endpoint
    user: str = ""  # with password: viewers must authenticate (RTSP Digest)
    password: str = ""


@dataclass(frozen=True)
class LuaConfig:
    max_memory_mb: int = 32
    instruction_budget: int = 50_000_000
    wall_budget_secs: float = 2.0
    queue_size: int = 10_000
    batch_size: int = 256
    restart_backoff_secs: float = 0.2


@dataclass(frozen=True)
class EventsConfig:
    log_max_rows: int = 100_000
    subscriber_queue_size: int = 10_000


@dataclass(frozen=True)
class ApiToken:
    token: str
    camera: str = ""  # non-empty: the token sees and acts on this camera (stream id) only


@dataclass(frozen=True)
class ApiConfig:
    listen: str = "127.0.0.1:8080"  # host:port of the HTTP API; every request needs a token
    tokens: tuple[ApiToken, ...] = ()


@dataclass(frozen=True)
class BackchannelServerConfig:
    listen: str = "127.0.0.1:0"  # reported by GET /api/1/status as backchannel_port


@dataclass(frozen=True)
class BackchannelSource:
    """A camera whose TCP backchannel the hub reads (``[[backchannel]]``)."""

    stream_id: str
    status_url: str


@dataclass(frozen=True)
class OscSource:
    """A camera whose OSC state the hub long-polls (``[[osc]]``)."""

    stream_id: str
    url: str


@dataclass(frozen=True)
class CloudConfig:
    """The cloud relay remote viewers reach live streams through (``[cloud]``); no host: none."""

    host: str = ""  # the relay's SSH server; empty: no tunnels
    port: int = 22
    user: str = ""
    key_file: str = ""  # private key (OpenSSH or PEM); must not be readable by group/others
    known_hosts: str = ""  # required with host: the relay's key is verified, never accepted blindly
    remote_port: int = 0  # port opened on the relay for the hub's RTSP server; 0: the relay picks
    remote_bind: str = ""  # address it is opened on ("": sshd's choice, see GatewayPorts)
    public_host: str = ""  # the host remote users dial (default: host)
    keepalive_secs: float = 15.0
    connect_timeout_secs: float = 10.0


@dataclass(frozen=True)
class NetworkConfig:
    poll_secs: float = 1.0  # the watcher also re-reads the interfaces this often (besides netlink)


@dataclass(frozen=True)
class HubConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    plugin_dirs: tuple[Path, ...] = ()
    log_file: Path | None = None
    log_level: str = "INFO"
    advertise_host: str | None = None
    health: HealthConfig = field(default_factory=HealthConfig)
    rtsp: RtspConfig = field(default_factory=RtspConfig)
    lua: LuaConfig = field(default_factory=LuaConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    backchannel_server: BackchannelServerConfig = field(default_factory=BackchannelServerConfig)
    backchannel: tuple[BackchannelSource, ...] = ()
    osc: tuple[OscSource, ...] = ()
    cloud: CloudConfig = field(default_factory=CloudConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "hub.sqlite3"


_SECTIONS = {"health": HealthConfig, "rtsp": RtspConfig, "lua": LuaConfig, "events": EventsConfig,
             "backchannel_server": BackchannelServerConfig, "cloud": CloudConfig,
             "network": NetworkConfig}
_LISTS = {"backchannel": BackchannelSource, "osc": OscSource}


def _coerce(where: str, name: str, value: Any, target: Any) -> Any:
    expected = target.type if isinstance(target.type, str) else getattr(target.type, "__name__", "")
    if "float" in expected and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if expected == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ConfigError(f"{where}: '{name}' must be an integer, got {value!r}")
    if expected == "str" and not isinstance(value, str):
        raise ConfigError(f"{where}: '{name}' must be a string, got {value!r}")
    if "float" in expected and not isinstance(value, int | float):
        raise ConfigError(f"{where}: '{name}' must be a number, got {value!r}")
    return value


def _section(where: str, cls: type, raw: Any, skip: tuple[str, ...] = ()) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key in skip:
            continue
        if key not in fields:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(fields))})")
        kwargs[key] = _coerce(where, key, value, fields[key])
    missing = [f.name for f in fields.values()
               if f.name not in kwargs and f.name not in skip
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(repr(m) for m in missing)}")
    return cls(**kwargs)


def _table_list(where: str, cls: type, raw: Any) -> tuple[Any, ...]:
    """An array of tables (``[[name]]``), each checked like a section."""
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: must be an array of tables ([[...]])")
    return tuple(_section(f"{where} #{i + 1}", cls, item) for i, item in enumerate(raw))


def _api(where: str, raw: Any) -> ApiConfig:
    base = _section(where, ApiConfig, raw, skip=("tokens",))
    tokens = _table_list(f"{where} tokens", ApiToken, raw.get("tokens", []))
    for tok in tokens:
        if not tok.token:
            raise ConfigError(f"{where} tokens: a token may not be empty")
    return dataclasses.replace(base, tokens=tokens)


def load_config(
    path: Path | None = None,
    *,
    data_dir: Path | None = None,
    plugin_dirs: tuple[Path, ...] = (),
    rtsp_port: int | None = None,
) -> HubConfig:
    """Read ``path`` (if given) and apply command-line overrides on top of it."""
    raw: dict[str, Any] = {}
    where = str(path) if path else "<defaults>"
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no such config file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    kwargs: dict[str, Any] = {}
    top = {f.name for f in dataclasses.fields(HubConfig)}
    for key, value in raw.items():
        if key in _SECTIONS:
            kwargs[key] = _section(f"{where} [{key}]", _SECTIONS[key], value)
        elif key in _LISTS:
            kwargs[key] = _table_list(f"{where} [[{key}]]", _LISTS[key], value)
        elif key == "api":
            kwargs[key] = _api(f"{where} [api]", value)
        elif key in ("data_dir", "log_file"):
            if not isinstance(value, str):
                raise ConfigError(f"{where}: '{key}' must be a path string")
            kwargs[key] = Path(value).expanduser()
        elif key == "plugin_dirs":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: 'plugin_dirs' must be a list of path strings")
            kwargs[key] = tuple(Path(v).expanduser() for v in value)
        elif key in ("log_level", "advertise_host"):
            if not isinstance(value, str):
                raise ConfigError(f"{where}: '{key}' must be a string")
            kwargs[key] = value
        elif key not in top:
            raise ConfigError(f"{where}: unknown key '{key}'")
    if data_dir is not None:
        kwargs["data_dir"] = Path(data_dir)
    if rtsp_port is not None:
        kwargs["rtsp"] = dataclasses.replace(kwargs.get("rtsp", RtspConfig()), port=rtsp_port)
    if plugin_dirs:
        kwargs["plugin_dirs"] = tuple(kwargs.get("plugin_dirs", ())) + tuple(plugin_dirs)
    cloud = kwargs.get("cloud")
    if cloud is not None and cloud.host:
        missing = [k for k in ("key_file", "known_hosts") if not getattr(cloud, k)]
        if missing:
            raise ConfigError(f"{where} [cloud]: a relay host needs {' and '.join(missing)} "
                              "(the relay's host key is verified, never accepted blindly)")
    return HubConfig(**kwargs)
