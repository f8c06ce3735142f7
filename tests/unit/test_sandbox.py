"""LuaSandbox used directly: every escape a plugin might try is refused, its limits hold, and the
plugin model of cameras-api.md ("Plugin model", "Other modules") works inside it.

The host is a fake that records what reaches it, so a test can also check that a forbidden effect
did not happen. No worker process here: the hub's wall-clock kill is tested with the workers.
Budgets are small (200 k instructions) so every runaway loop ends in milliseconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lupa.lua54
import pytest

from hubruntime.lua.runtime import Limits, LuaSandbox, ScriptError, json_encode

PID = "acme.test"
HUB = f"HUB:{PID}/scripts/"
SMALL = Limits(instruction_budget=200_000)
API = (
    "cameras.get_camera_streams",
    "cameras.delete_audio_stream",
    "cameras.add_camera_stream",
    "cameras.create_live_rtsp_stream",
    "storage.get_string",
    "storage.set_string",
)
BUDGET = "instruction budget exceeded"


class FakeHost:
    """Records every call and log line; answers from ``answers`` (name -> (ok, value) or a
    callable taking the call's arguments)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []
        self.logs: list[tuple[str, str, str]] = []
        self.answers: dict[str, Any] = {}
        self.log_error: Exception | None = None

    def call(self, name: str, where: str, *args: Any) -> Any:
        self.calls.append((name, where, args))
        if name == "logging.format":  # what the worker does
            msg = args[0] if args else None
            return True, msg if isinstance(msg, str) else json_encode(msg)
        answer = self.answers.get(name, (True, None))
        return answer(*args) if callable(answer) else answer

    def log(self, level: str, where: str, msg: str) -> None:
        if self.log_error is not None:
            raise self.log_error
        self.logs.append((level, where, msg))

    def called(self, name: str) -> list[tuple[str, str, tuple[Any, ...]]]:
        return [c for c in self.calls if c[0] == name]

    @property
    def messages(self) -> list[str]:
        return [m for _, _, m in self.logs]


def make(
    host: FakeHost,
    permissions: tuple[str, ...] = ("cameras", "logging", "timer", "json"),
    limits: Limits = SMALL,
    api: tuple[str, ...] = API,
    plugin_id: str = PID,
) -> LuaSandbox:
    return LuaSandbox(plugin_id, permissions, host.call, host.log, limits, api_functions=api)


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


@pytest.fixture
def sb(host: FakeHost) -> LuaSandbox:
    return make(host)


def run(sb: LuaSandbox, src: str | bytes, *args: Any, name: str = "t") -> str | None:
    sb.compile(f"scripts/{name}", src)
    return sb.run_script(name, *args)


def ok(sb: LuaSandbox, src: str, *args: Any, name: str = "t") -> None:
    err = run(sb, src, *args, name=name)
    assert err is None, err


def fails(sb: LuaSandbox, src: str, *args: Any, name: str = "t") -> str:
    err = run(sb, src, *args, name=name)
    assert err is not None, "the script was expected to fail"
    return err


def timed_fail(sb: LuaSandbox, src: str, name: str = "t") -> str:
    """A runaway script must be stopped by the budget, and quickly."""
    start = time.monotonic()
    err = fails(sb, src, name=name)
    assert time.monotonic() - start < 2.0
    return err


# -- os, io ---------------------------------------------------------------------------------------


def test_os_keeps_only_the_time_functions(sb: LuaSandbox, host: FakeHost) -> None:
    ok(sb, """
        local names = {}
        for k in pairs(os) do names[#names + 1] = k end
        table.sort(names)
        print(table.concat(names, ","))
        print(math.type(os.time()), type(os.clock()), os.date("!%Y", 0), os.difftime(5, 2))
    """)
    assert host.messages == ["clock,date,difftime,time", "integer\tnumber\t1970\t3.0"]


@pytest.mark.parametrize(
    ("code", "field"),
    [
        ('os.execute("touch {created}")', "execute"),
        ('os.execute("rm {victim}")', "execute"),
        ('os.remove("{victim}")', "remove"),
        ('os.rename("{victim}", "{created}")', "rename"),
        ('os.getenv("HOME")', "getenv"),
        ("os.exit(3)", "exit"),
        ("os.tmpname()", "tmpname"),
        ('os.setlocale("C")', "setlocale"),
    ],
)
def test_os_escapes_are_refused(sb: LuaSandbox, tmp_path: Path, code: str, field: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    created = tmp_path / "created"
    err = fails(sb, code.format(created=created, victim=victim))
    assert f"{HUB}t:1: attempt to call a nil value (field '{field}')" in err
    assert victim.read_text() == "keep"
    assert not created.exists()


@pytest.mark.parametrize(
    "code",
    [
        'io.open("{created}", "w"):write("x")',
        'io.popen("touch {created}")',
        'io.lines("{victim}")',
        'io.output("{created}")',
        'require("io").open("{created}", "w")',
        '_G.io.open("{created}", "w")',
        'load("return io")().open("{created}", "w")',
    ],
)
def test_io_is_gone(sb: LuaSandbox, tmp_path: Path, code: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    created = tmp_path / "created"
    err = fails(sb, code.format(created=created, victim=victim))
    assert ("attempt to index a nil value" in err
            or f"module 'io' is not available to plugin {PID}" in err), err
    assert not created.exists()
    assert victim.read_text() == "keep"


# -- load, string.dump ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def binary_chunk() -> bytes:
    """Real bytecode, made by a separate plain runtime (the sandbox has no string.dump)."""
    plain = lupa.lua54.LuaRuntime(encoding=None)
    chunk = plain.eval('string.dump(function() ESCAPED = "yes"; return 42 end)')
    assert isinstance(chunk, bytes) and chunk.startswith(b"\x1bLua")
    assert plain.eval("load(...)", chunk)() == 42  # it is a working chunk outside the sandbox
    return chunk


def test_load_refuses_a_binary_chunk(sb: LuaSandbox, host: FakeHost, binary_chunk: bytes) -> None:
    ok(sb, """
        local chunk = ...
        local f, err = load(chunk)
        print(f, err)
        f, err = load(chunk, "x", "t", {})
        print(f, err)
    """, binary_chunk)
    for msg in host.messages:
        assert msg.startswith("nil\t")
        assert "attempt to load a binary chunk (mode is 't')" in msg
    ok(sb, "print(ESCAPED)")
    assert host.messages[-1] == "nil"


@pytest.mark.parametrize("mode", ["b", "bt", "tb", "B"])
def test_load_with_a_binary_mode_is_refused(
    sb: LuaSandbox, host: FakeHost, binary_chunk: bytes, mode: str
) -> None:
    ok(sb, "local chunk, mode = ...; print(load(chunk, 'x', mode))", binary_chunk, mode)
    assert host.messages == ["nil\tload: only text chunks may be loaded in a plugin (mode 't')"]
    ok(sb, "print(ESCAPED)")
    assert host.messages[-1] == "nil"


def test_load_with_a_reader_function_refuses_bytecode(
    sb: LuaSandbox, host: FakeHost, binary_chunk: bytes
) -> None:
    ok(sb, """
        local chunk = ...
        local pieces, i = {chunk:sub(1, 10), chunk:sub(11)}, 0
        local f, err = load(function() i = i + 1; return pieces[i] end)
        print(f, err)
    """, binary_chunk)
    assert host.messages[0].startswith("nil\t")
    assert "attempt to load a binary chunk" in host.messages[0]


def test_compile_refuses_bytecode(sb: LuaSandbox, binary_chunk: bytes) -> None:
    with pytest.raises(ScriptError, match="attempt to load a binary chunk"):
        sb.compile("scripts/bin", binary_chunk)  # type: ignore[arg-type]


def test_load_of_text_works_in_the_plugin_globals(sb: LuaSandbox, host: FakeHost) -> None:
    ok(sb, """
        load("answer = 6 * 7")()
        print(answer, load("return 1 + 1", "x", "t")())
        print(load("return debug, io, package, python, os.execute, dofile")())
    """)
    assert host.messages == ["42\t2", "nil\tnil\tnil\tnil\tnil\tnil"]


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        ("string.dump(print)", "(field 'dump')"),
        ('("").dump(print)', "(field 'dump')"),
        ('local s = "abc"; s:dump()', "(method 'dump')"),
        ('require("string").dump(print)', "(field 'dump')"),
        ("_G.string.dump(function() end)", "(field 'dump')"),
    ],
)
def test_string_dump_is_gone(sb: LuaSandbox, code: str, fragment: str) -> None:
    err = fails(sb, code)
    assert "attempt to call a nil value " + fragment in err


# -- debug, package, files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        ("debug.getinfo(1)", "global 'debug'"),
        ("debug.sethook()", "global 'debug'"),
        ("debug.getupvalue(print, 1)", "global 'debug'"),
        ("debug.setupvalue(print, 1, nil)", "global 'debug'"),
        ("_G.debug.getregistry()", "field 'debug'"),
        ('require("debug").getupvalue(print, 1)', "module 'debug' is not available to plugin"),
        ('load("return debug")().getupvalue(print, 1)', "attempt to index a nil value"),
    ],
)
def test_debug_is_gone(sb: LuaSandbox, code: str, fragment: str) -> None:
    assert fragment in fails(sb, code)


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        ('package.loadlib("libc.so.6", "system")', "global 'package'"),
        ("return package.cpath", "global 'package'"),
        ("return package.loaded.os", "global 'package'"),
        ('require("lfs")', f"module 'lfs' is not available to plugin {PID}"),
        ('require("socket.core")', f"module 'socket.core' is not available to plugin {PID}"),
        ('require("package")', f"module 'package' is not available to plugin {PID}"),
        ('dofile("{script}")', "global 'dofile'"),
        ('loadfile("{script}")()', "global 'loadfile'"),
    ],
)
def test_package_and_files_are_gone(
    sb: LuaSandbox, host: FakeHost, tmp_path: Path, code: str, fragment: str
) -> None:
    script = tmp_path / "evil.lua"
    script.write_text('ESCAPED = "yes"')
    assert fragment in fails(sb, code.format(script=script))
    ok(sb, "print(ESCAPED)")
    assert host.messages == ["nil"]


def test_nothing_reachable_is_a_python_object_or_an_escape_hatch(
    sb: LuaSandbox, host: FakeHost
) -> None:
    """Walk every table reachable from the plugin (globals, modules, metatables): no userdata
    (a Python callable, the host functions included, would be one), and none of the dangerous
    standard functions under any name."""
    host.answers["cameras.get_camera_streams"] = (True, {"streams": [{"id": "s1"}], "n": 1})
    ok(sb, """
        local seen, bad, names = {}, {}, {}
        local forbidden = {}
        for _, n in ipairs({"sethook", "gethook", "getupvalue", "setupvalue", "upvalueid",
                            "getregistry", "getinfo", "getlocal", "loadlib", "dump", "execute",
                            "popen", "open", "exit", "getenv", "tmpname", "rename", "dofile",
                            "loadfile", "searchpath", "python", "builtins", "eval"}) do
          forbidden[n] = true
        end
        local function walk(v, path, depth)
          local t = type(v)
          if t == "userdata" then bad[#bad + 1] = path .. " is userdata" end
          if t ~= "table" or seen[v] or depth > 10 then return end
          seen[v] = true
          for k, x in pairs(v) do
            if forbidden[k] then bad[#bad + 1] = path .. "." .. tostring(k) end
            walk(k, path .. "[key]", depth + 1)
            walk(x, path .. "." .. tostring(k), depth + 1)
          end
          local mt = getmetatable(v)
          if mt ~= nil then walk(mt, path .. "<mt>", depth + 1) end
        end
        walk(_G, "_G", 0)
        walk(getmetatable(""), "string_mt", 0)
        for _, m in ipairs({"cameras", "logging", "timer", "json", "string", "table", "math",
                            "utf8", "coroutine"}) do
          walk(require(m), m, 0)
        end
        walk(require("cameras").get_camera_streams("c1"), "host_value", 0)
        walk(..., "args", 0)
        print(#bad == 0 and "clean" or table.concat(bad, " "))
    """, {"nested": {"list": [1, 2]}})
    assert host.messages == ["clean"]


# -- Python objects -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        ("return python.builtins", "global 'python'"),
        ('return python.eval("1")', "global 'python'"),
        ("return python.as_attrgetter", "global 'python'"),
        ('require("python")', f"module 'python' is not available to plugin {PID}"),
        ('return _G.python.builtins.open("/etc/passwd")', "field 'python'"),
    ],
)
def test_the_python_global_is_gone(sb: LuaSandbox, code: str, fragment: str) -> None:
    assert fragment in fails(sb, code)


def test_host_values_arrive_as_plain_lua_tables(sb: LuaSandbox, host: FakeHost) -> None:
    host.answers["cameras.get_camera_streams"] = (
        True,
        {"streams": [{"id": "s1"}, {"id": "s2"}], "meta": {"n": 2}, "pair": ("a", "b")},
    )
    ok(sb, """
        local cameras = require("cameras")
        local d = cameras.get_camera_streams("cam1")
        print(type(d), getmetatable(d), getmetatable(d.streams), getmetatable(d.streams[1]))
        print(#d.streams, d.streams[1].id, d.streams[2].id, d.streams[0], d.meta.n)
        print(d.pair[1], d.pair[2], #d.pair)
        print(d.keys, d.items, d.__class__, d.__dict__, rawget(d, "__class__"))
        print(tostring(d):sub(1, 7), string.format("%s", d.meta):sub(1, 7))
        local n = 0
        for _ in pairs(d) do n = n + 1 end
        print(n)
    """)
    assert host.messages == [
        "table\tnil\tnil\tnil",
        "2\ts1\ts2\tnil\t2",
        "a\tb\t2",
        "nil\tnil\tnil\tnil\tnil",
        "table: \ttable: ",
        "3",
    ]
    assert host.called("cameras.get_camera_streams") == [
        ("cameras.get_camera_streams", f"{HUB}t:3", ("cam1",))
    ]


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        ((True, object()), "returned a value a plugin cannot hold: a object cannot be handed"),
        ((True, {1, 2}), "a set cannot be handed to a plugin"),
        ((True, {"a": object()}), "a object cannot be handed to a plugin"),
        ((True, [Path("/")]), "cannot be handed to a plugin"),
        ((True, {("tuple", "key"): 1}), "a table key of type tuple"),
        ((True, "\udcff"), "surrogates not allowed"),
        ("not a pair", "cameras.get_camera_streams: "),
        ((False, RuntimeError("not a text")), "cameras.get_camera_streams: not a text"),
    ],
)
def test_host_values_that_are_not_data_become_errors(
    sb: LuaSandbox, host: FakeHost, answer: Any, fragment: str
) -> None:
    host.answers["cameras.get_camera_streams"] = answer
    ok(sb, """
        local ok, err = pcall(require("cameras").get_camera_streams, "cam1")
        print(ok, type(err), err)
    """)
    (msg,) = host.messages
    assert msg.startswith(f"false\tstring\t{HUB}t:2: cameras.get_camera_streams: ")
    assert fragment in msg


def test_a_raising_host_function_gives_a_text_error_not_a_python_exception(
    sb: LuaSandbox, host: FakeHost
) -> None:
    def boom(*args: Any) -> Any:
        raise RuntimeError("hub is gone")

    host.answers["cameras.get_camera_streams"] = boom
    ok(sb, """
        local ok, err = pcall(require("cameras").get_camera_streams, "cam1")
        print(ok, type(err), getmetatable(err) == getmetatable(""), err)
    """)
    assert host.messages == [
        f"false\tstring\ttrue\t{HUB}t:2: cameras.get_camera_streams: hub is gone"
    ]


def test_a_raising_host_log_gives_a_text_error(sb: LuaSandbox, host: FakeHost) -> None:
    host.log_error = BrokenPipeError("hub closed the socket")
    ok(sb, """
        local ok1, e1 = pcall(print, "x")
        local ok2, e2 = pcall(require("logging").warning, "y")
        RESULT = table.concat({tostring(ok1), type(e1), e1, tostring(ok2), type(e2), e2}, "|")
    """)
    host.log_error = None
    ok(sb, "print(RESULT)")
    assert host.messages == [
        f"false|string|{HUB}t:2: logging.info: hub closed the socket|"
        f"false|string|{HUB}t:3: logging.warning: hub closed the socket"
    ]


def test_big_ints_from_the_host_become_floats(sb: LuaSandbox, host: FakeHost) -> None:
    host.answers["cameras.get_camera_streams"] = (True, {"big": 2**70, "small": 2**62})
    ok(sb, """
        local v = require("cameras").get_camera_streams("c")
        print(math.type(v.big), math.type(v.small), v.small == 2^62)
    """)
    assert host.messages == ["float\tinteger\ttrue"]


def test_python_values_from_the_caller_are_refused_before_lua(sb: LuaSandbox) -> None:
    sb.compile("scripts/t", "GOT = ...")
    with pytest.raises(ValueError, match="cannot be handed to a plugin"):
        sb.run_script("t", object())
    sb.compile("scripts/h", "GOT = ...")
    sb.subscribe("h")
    with pytest.raises(ValueError, match="cannot be handed to a plugin"):
        sb.dispatch({"event": "x", "thing": {"deep": [object()]}})
    with pytest.raises(ValueError, match="table key of type"):
        sb.dispatch({"event": "x", "thing": {object(): 1}})
    with pytest.raises(ValueError):
        sb.dispatch({"event": "x", "name": "\udcff"})


def test_tostring_tricks_show_no_python(sb: LuaSandbox, host: FakeHost) -> None:
    ok(sb, """
        local cameras = require("cameras")
        local out = {}
        for _, v in ipairs({print, require, cameras.get_camera_streams, load, tostring,
                            require("logging").info, coroutine.wrap(function() end)}) do
          out[#out + 1] = tostring(v):match("^function: ") and "fn" or tostring(v)
        end
        print(table.concat(out, ","))
        print(getmetatable(print), getmetatable(cameras), getmetatable(cameras.get_camera_streams))
    """)
    assert host.messages == ["fn,fn,fn,fn,fn,fn,fn", "nil\tnil\tnil"]


# -- the shared string metatable ------------------------------------------------------------------


def test_string_metatable_is_locked(sb: LuaSandbox, host: FakeHost) -> None:
    ok(sb, """
        print(type(getmetatable("")), getmetatable("abc"))
        print(pcall(setmetatable, "", {}))
        print(pcall(function() return getmetatable("").__index end))
        print(pcall(rawset, getmetatable(""), "__index", {}))
    """)
    assert host.messages[0] == "boolean\tfalse"
    assert "bad argument #1 to 'setmetatable' (table expected, got string)" in host.messages[1]
    assert host.messages[1].startswith("false\t")
    assert "attempt to index a boolean value" in host.messages[2]
    assert "table expected, got boolean" in host.messages[3]


def test_tampering_with_string_does_not_change_string_methods(
    sb: LuaSandbox, host: FakeHost
) -> None:
    ok(sb, """
        string.upper = nil
        string.rep = function() return "hacked" end
        string.len = function() return -1 end
        _G.string = {}
        print(("x"):upper(), ("x"):rep(2), ("abc"):len(), ("%d"):format(7))
    """)
    ok(sb, 'print(("x"):upper(), ("x"):rep(2), string.rep)')
    assert host.messages[0] == "X\txx\t3\t7"
    assert host.messages[1] == "X\txx\tnil"
    other = make(FakeHost())
    assert run(other, 'assert(string.rep("x", 2) == "xx" and string.upper("x") == "X")') is None


# -- require --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("storage", f"module 'storage' is not granted to plugin {PID}"),
        ("os", f"module 'os' is not available to plugin {PID}"),
        ("io", f"module 'io' is not available to plugin {PID}"),
        ("debug", f"module 'debug' is not available to plugin {PID}"),
        ("ffi", f"module 'ffi' is not available to plugin {PID}"),
        ("jit", f"module 'jit' is not available to plugin {PID}"),
        ("_G", f"module '_G' is not available to plugin {PID}"),
        ("HUB:other.plugin/scripts/x", "module 'HUB:other.plugin/scripts/x' is not available"),
        ("HUB:other.plugin/scripts/lib", "module 'HUB:other.plugin/scripts/lib' is not available"),
        (f"HUB:{PID}/scripts/missing", f"module 'HUB:{PID}/scripts/missing' is not available"),
        ("../other.plugin/scripts/lib", "is not available"),
    ],
)
def test_require_refuses_what_is_not_granted(sb: LuaSandbox, name: str, fragment: str) -> None:
    sb.compile("scripts/lib", "LIB_RAN = true; return {}")
    err = fails(sb, f"require({name!r})")
    assert err.startswith(f"{HUB}t:1: require: ")
    assert fragment in err
    assert run(sb, "assert(LIB_RAN == nil)") is None


def test_require_with_a_non_string(sb: LuaSandbox) -> None:
    assert "require: module name must be a string, got number" in fails(sb, "require(42)")


def test_require_of_a_granted_module_works(host: FakeHost) -> None:
    sb = make(host, permissions=("storage", "logging"))
    host.answers["storage.get_string"] = (True, "stored")
    ok(sb, """
        local storage = require("storage")
        storage.set_string("k", "v")
        print(storage.get_string("k"), require("storage") == storage)
    """)
    assert host.messages == ["stored\ttrue"]
    assert [c[0] for c in host.calls] == ["storage.set_string", "storage.get_string"]
    assert host.calls[0][2] == ("k", "v")
    assert "not granted" in fails(sb, 'require("cameras")')


def test_permissions_outside_the_hub_modules_grant_nothing(host: FakeHost) -> None:
    sb = make(host, permissions=("os", "io", "debug", "package", "python"))
    for name in ("os", "io", "debug", "package", "python"):
        assert f"module '{name}' is not available" in fails(sb, f"require({name!r})")


def test_require_of_own_scripts_runs_them_once(sb: LuaSandbox, host: FakeHost) -> None:
    sb.compile("scripts/lib", """
        lib_runs = (lib_runs or 0) + 1
        return {greet = function(who) return "hello " .. who end}
    """)
    sb.compile("scripts/util/plain", "plain_runs = (plain_runs or 0) + 1")
    ok(sb, f"""
        local a = require("HUB:{PID}/scripts/lib")
        local b = require("scripts/lib")
        local c = require("lib")
        print(a == b, b == c, a.greet("plugin"), lib_runs)
        print(require("scripts/util/plain"), require("HUB:{PID}/scripts/util/plain"), plain_runs)
    """)
    ok(sb, 'print(require("lib").greet("again"), lib_runs)')
    assert host.messages == ["true\ttrue\thello plugin\t1", "true\ttrue\t1", "hello again\t1"]


# -- collectgarbage -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option", ["stop", "restart", "generational", "incremental", "setpause", "setstepmul"]
)
def test_collectgarbage_options_that_change_the_collector_are_refused(
    sb: LuaSandbox, option: str
) -> None:
    err = fails(sb, f'collectgarbage("{option}")')
    assert f"{HUB}t:1: collectgarbage: option '{option}' is not allowed in a plugin" in err


def test_collectgarbage_count_collect_step_work(sb: LuaSandbox, host: FakeHost) -> None:
    ok(sb, 'print(type(collectgarbage("count")), collectgarbage(), collectgarbage("step"))')
    assert host.messages == ["number\t0\ttrue"]


# -- finalizers and error objects: no plugin code outside the budget ------------------------------


def test_gc_finalizers_are_refused(sb: LuaSandbox, host: FakeHost) -> None:
    err = fails(sb, "setmetatable({}, {__gc = function() FINALIZED = true end})")
    assert f"{HUB}t:1: setmetatable: __gc finalizers are not allowed in a plugin" in err
    # a __gc added later is not a finalizer in Lua 5.4, so the refusal is enough
    ok(sb, """
        local mt = {__index = {answer = 42}}
        local t = setmetatable({}, mt)
        assert(t.answer == 42 and getmetatable(t) == mt)
        mt.__gc = function() while true do end end
        t = nil
        collectgarbage()
        collectgarbage()
    """)
    sb.collect()
    ok(sb, "print(FINALIZED)")
    assert host.messages == ["nil"]


def test_error_objects_become_text(sb: LuaSandbox) -> None:
    assert fails(sb, "error({})").startswith("table: ")
    assert fails(sb, "error()") == "nil"
    assert fails(sb, "error(42)") == "42"
    assert fails(sb, 'error(setmetatable({}, {__tostring = function() return "custom" end}))') \
        == "custom"
    assert fails(sb, "error(setmetatable({}, {__tostring = function() return {} end}))") \
        == "(an error object that could not be turned into text)"


def test_an_error_objects_tostring_runs_under_the_budget(sb: LuaSandbox) -> None:
    err = timed_fail(sb, "error(setmetatable({}, {__tostring = function() while true do end end}))")
    assert err == "(an error object that could not be turned into text)"
    ok(sb, "X = 1")


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("setmetatable(1, {})", "bad argument #1 to 'setmetatable' (table expected, got number)"),
        ("setmetatable(setmetatable({}, {__metatable = 1}), {})",
         "cannot change a protected metatable"),
        ("coroutine.create(1)",
         "bad argument #1 to 'coroutine.create' (function expected, got number)"),
        ("coroutine.close(1)",
         "bad argument #1 to 'coroutine.close' (thread expected, got number)"),
        ("print(setmetatable({}, {__tostring = function() return {} end}))",
         "'__tostring' must return a string"),
        ("require({})", "require: module name must be a string, got table"),
        ("xpcall(print, 1)", "bad argument #2 to 'xpcall' (function expected, got number)"),
        ("local ok, e = pcall(require, 'os'); error(e, 0)",
         f"require: module 'os' is not available to plugin {PID}"),
    ],
)
def test_errors_from_the_sandbox_wrappers_name_the_plugins_line(
    sb: LuaSandbox, code: str, message: str
) -> None:
    assert fails(sb, "\n" + code) == f"{HUB}t:2: {message}"


# -- text that is not UTF-8 -----------------------------------------------------------------------


def test_invalid_utf8_never_raises_into_python(sb: LuaSandbox, host: FakeHost) -> None:
    ok(sb, r'print("a\255b"); require("logging").info("\192")')
    assert host.messages == ["a\ufffdb", "\ufffd"]
    assert fails(sb, r'error("bad \255 byte")') == f"{HUB}t:1: bad \ufffd byte"
    ok(sb, r"""
        print(pcall(require("cameras").get_camera_streams, "ok", "\255"))
    """)
    assert host.messages[-1] == (
        f"false\t{HUB}t:2: cameras.get_camera_streams: argument #2 is not valid UTF-8 text"
    )
    assert host.called("cameras.get_camera_streams") == []
    sb.compile("scripts/h", r'error("\255\254")')
    sb.subscribe("h")
    assert sb.dispatch({"event": "x"}) == [f"{HUB}h:1: \ufffd\ufffd"]


# -- instruction budget ---------------------------------------------------------------------------


def test_an_endless_loop_is_stopped_and_the_sandbox_goes_on(sb: LuaSandbox, host: FakeHost) -> None:
    err = timed_fail(sb, "while true do end")
    assert err == f"{HUB}t:1: {BUDGET}"
    ok(sb, "print('next run')")
    assert host.messages == ["next run"]


def test_the_budget_is_reset_per_run(sb: LuaSandbox) -> None:
    # two instructions per iteration (ADD, FORLOOP): 60 k iterations ~ 60 % of 200 k
    sixty = "local x = 0 for i = 1, 60000 do x = x + i end"
    for _ in range(4):
        ok(sb, sixty, name="sixty")
    assert BUDGET in fails(sb, "local x = 0 for i = 1, 150000 do x = x + i end")
    ok(sb, sixty, name="sixty")


@pytest.mark.parametrize(
    "src",
    [
        "coroutine.wrap(function() while true do end end)()",
        "local co = coroutine.create(function() while true do end end)\n"
        "local ok, err = coroutine.resume(co)\nerror(err, 0)",
        "local co = coroutine.create(function() while true do end end)\n"
        "while true do coroutine.resume(co) end",
        "local gen = coroutine.wrap(function() while true do coroutine.yield(1) end end)\n"
        "while true do gen() end",
        "local co = coroutine.create(function() while true do coroutine.yield() end end)\n"
        "while true do coroutine.resume(co) end",
        "coroutine.wrap(function()\n"
        "  coroutine.wrap(function() while true do end end)()\nend)()",
        "coroutine.wrap(function()\n"
        "  while true do pcall(function() while true do end end) end\nend)()",
        "while true do pcall(function() while true do end end) end",
        "while true do pcall(error, 'x') end",
        "while true do xpcall(function() while true do end end, function(e) return e end) end",
        "while true do\n"
        "  xpcall(function() while true do end end, function() while true do end end)\nend",
        "local function f() return pcall(f) end while true do f() end",
        "while true do local ok = pcall(string.rep, 'x', 10) end",
        "local t = {} for i = 1, 100 do t[i] = i end\n"
        "while true do table.sort(t, function(a, b) while true do end end) end",
        'while true do string.gsub("aaaa", "a", function() while true do end end) end',
        "while true do load(function() while true do end end) end",
        "while true do require('t') end",
    ],
)
def test_runaway_loops_are_stopped(sb: LuaSandbox, host: FakeHost, src: str) -> None:
    err = timed_fail(sb, src)
    assert err.startswith(HUB) and err.endswith(BUDGET), err
    ok(sb, "print('alive')", name="after")
    assert host.messages[-1] == "alive"


def test_a_coroutine_from_an_earlier_run_is_still_under_the_budget(
    sb: LuaSandbox, host: FakeHost
) -> None:
    ok(sb, """
        gen = coroutine.wrap(function()
          local n = 0
          while true do n = n + 1; coroutine.yield(n) end
        end)
        co = coroutine.create(function() while true do end end)
        print(gen(), gen())
    """, name="setup")
    assert BUDGET in timed_fail(sb, "while true do gen() end")
    err = run(sb, "local ok, e = coroutine.resume(co); print(ok, e)", name="resume")
    assert err is None, err
    assert host.messages[0] == "1\t2"
    assert host.messages[1].startswith("false\t") and BUDGET in host.messages[1]
    ok(sb, "print(coroutine.status(co))")
    assert host.messages[-1] == "dead"


def test_a_looping_subscriber_fails_alone(sb: LuaSandbox) -> None:
    sb.compile("scripts/loop", "local params = ...\nwhile true do end")
    sb.compile("scripts/count", "local params = ...\nCOUNT = (COUNT or 0) + 1")
    sb.subscribe("loop")
    sb.subscribe("count")
    for _ in range(3):
        assert sb.dispatch({"event": "x"}) == [f"{HUB}loop:2: {BUDGET}"]
    sb.compile("scripts/check", "assert(COUNT == 3, tostring(COUNT))")
    assert sb.run_script("check") is None


# -- memory ---------------------------------------------------------------------------------------

CAP = 8 << 20


@pytest.mark.parametrize(
    "bomb",
    [
        'local t = {} for i = 1, 1e7 do t[i] = ("x"):rep(64) .. i end',
        'local s = string.rep("x", 1 << 30)',
        'local s = "x" while true do s = s .. s end',
        'local t = {} for i = 1, 1e7 do t[i] = {i, i, i} end',
        'local t = {} for i = 1, 1e7 do t[#t + 1] = "y" end local s = table.concat(t)',
        'coroutine.wrap(function() local t = {} for i = 1, 1e7 do t[i] = {} end end)()',
    ],
)
def test_an_allocation_bomb_hits_the_cap_and_the_sandbox_goes_on(
    host: FakeHost, bomb: str
) -> None:
    sb = make(host, limits=Limits(max_memory=CAP, instruction_budget=50_000_000))
    start = time.monotonic()
    err = fails(sb, bomb)
    assert time.monotonic() - start < 3.0
    assert "not enough memory" in err, err
    assert sb.memory_used() < CAP
    ok(sb, 'print(("ok"):rep(2))', name="after")
    assert host.messages == ["okok"]
    assert sb.collect() < CAP // 4


def test_a_caught_memory_error_lets_the_script_go_on(host: FakeHost) -> None:
    sb = make(host, limits=Limits(max_memory=CAP))
    ok(sb, """
        local ok, err = pcall(function()
          local t = {}
          for i = 1, 1e7 do t[i] = ("z"):rep(100) .. i end
        end)
        print(ok, err)
    """)
    assert host.messages == ["false\tnot enough memory"]
    assert sb.memory_used() < CAP


def test_memory_hoarded_in_globals_can_be_released(host: FakeHost) -> None:
    sb = make(host, limits=Limits(max_memory=CAP))
    err = fails(sb, 'HOARD = {} for i = 1, 1e7 do HOARD[i] = ("h"):rep(64) .. i end')
    assert "not enough memory" in err
    assert sb.memory_used() < CAP
    ok(sb, "HOARD = nil collectgarbage()")
    assert sb.collect() < CAP // 4
    ok(sb, "local t = {} for i = 1, 10000 do t[i] = ('q'):rep(10) .. i end")


def test_memory_used_reports_growth(host: FakeHost) -> None:
    sb = make(host, limits=Limits(max_memory=CAP))
    before = sb.collect()
    ok(sb, "KEEP = {} for i = 1, 20000 do KEEP[i] = ('k'):rep(20) .. i end")
    assert sb.memory_used() > before + 500_000
    assert sb.memory_used() < CAP


# -- scripts, errors, globals ---------------------------------------------------------------------


def test_a_failing_subscriber_reports_file_and_line_and_the_others_still_run(
    sb: LuaSandbox, host: FakeHost
) -> None:
    sb.compile("scripts/bad", 'local params = ...\nif params.event then\n'
                              '  error("boom " .. params.event)\nend')
    sb.compile("scripts/arith", "local params = ...\nlocal x = params.missing + 1")
    sb.compile("scripts/good", "local params = ...\nSEEN = SEEN or {}\n"
                               "SEEN[#SEEN + 1] = params.event")
    ids = [sb.subscribe(name) for name in ("bad", "arith", "good")]
    assert ids == [(f"{PID}#1", None), (f"{PID}#2", None), (f"{PID}#3", None)]
    assert sb.subscriber_count == 3
    for i in range(3):
        failures = sb.dispatch({"event": f"e{i}"})
        assert failures == [
            f"{HUB}bad:3: boom e{i}",
            f"{HUB}arith:2: attempt to perform arithmetic on a nil value (field 'missing')",
        ]
    ok(sb, "print(table.concat(SEEN, ','))")
    assert host.messages == ["e0,e1,e2"]
    assert sb.unsubscribe(f"{PID}#1") is True
    assert sb.unsubscribe(f"{PID}#1") is False
    assert sb.subscriber_count == 2
    assert len(sb.dispatch({"event": "e3"})) == 1


def test_subscribe_to_a_missing_or_foreign_script(sb: LuaSandbox) -> None:
    assert sb.subscribe("nope") == (None, f"cameras.subscribe: no script 'nope' in plugin {PID}")
    sb.compile("scripts/x", "return")
    sid, err = sb.subscribe("HUB:other.plugin/scripts/x")
    assert sid is None and "no script" in err


def test_globals_persist_within_a_plugin_and_not_across_plugins(host: FakeHost) -> None:
    a = make(host)
    b = make(host, plugin_id="acme.other")
    ok(a, "COUNTER = (COUNTER or 0) + 1")
    ok(a, "COUNTER = (COUNTER or 0) + 1")
    ok(a, "print(COUNTER, _G.COUNTER)", name="read")
    ok(b, "print(COUNTER)", name="read")
    ok(b, "print = nil")  # b breaks its own print, a does not care
    ok(a, "print(COUNTER)", name="read")
    assert host.messages == ["2\t2", "nil", "2"]


@pytest.mark.parametrize("name", ["broken", "scripts/broken", f"HUB:{PID}/scripts/broken"])
def test_syntax_errors_raise_script_error_with_file_and_line(sb: LuaSandbox, name: str) -> None:
    with pytest.raises(ScriptError) as info:
        sb.compile(name, "local x = 1\n\nif then\nend")
    assert str(info.value).startswith(f"{HUB}broken:3:")
    assert "unexpected symbol" in str(info.value)


def test_a_failed_compile_keeps_the_previous_version(sb: LuaSandbox, host: FakeHost) -> None:
    sb.compile("scripts/s", "print('v1')")
    with pytest.raises(ScriptError):
        sb.compile("scripts/s", "print('v2'")
    assert sb.run_script("s") is None
    assert host.messages == ["v1"]


def test_compile_refuses_another_plugins_address(sb: LuaSandbox) -> None:
    with pytest.raises(ScriptError, match="bad script name"):
        sb.compile("HUB:other.plugin/scripts/x", "return")
    assert sb.run_script("HUB:other.plugin/scripts/x") is not None


def test_run_of_a_missing_script(sb: LuaSandbox) -> None:
    assert sb.run_script("ghost") == f"no script {HUB}ghost"


# -- events and the plugin model ------------------------------------------------------------------


def test_the_event_table_carries_every_field(sb: LuaSandbox) -> None:
    sb.compile("scripts/check", """
        local params = ...
        assert(params.event == "stream_snapshotted", params.event)
        assert(params.streamId == "s1")
        assert(math.type(params.count) == "integer" and params.count == 5)
        assert(params.ratio == 0.5 and params.flag == true and params.off == false)
        assert(params.none == nil)
        assert(params.cloudStorageKey.bucket == "b" and params.cloudStorageKey.meta.size == 10)
        assert(#params.list == 3 and params.list[1] == "a" and params.list[3] == "c")
        assert(params.list[0] == nil and params.list[4] == nil)
        assert(params.objs[2].id == 2 and #params.objs == 2)
        assert(#params.matrix == 2 and params.matrix[2][1] == 3)
        assert(getmetatable(params) == nil and getmetatable(params.list) == nil)
        local n = 0
        for i, v in ipairs(params.list) do n = n + 1 end
        assert(n == 3)
        SEEN = (SEEN or 0) + 1
    """)
    sb.subscribe("check")
    event = {
        "event": "stream_snapshotted",
        "streamId": "s1",
        "count": 5,
        "ratio": 0.5,
        "flag": True,
        "off": False,
        "none": None,
        "cloudStorageKey": {"bucket": "b", "meta": {"size": 10}},
        "list": ["a", "b", "c"],
        "objs": [{"id": 1}, {"id": 2}],
        "matrix": [[1, 2], [3, 4]],
    }
    assert sb.dispatch(event) == []
    flat = {"event": "live_rtsp_stream_started", "streamId": "s1", "localRtspUrl": "rtsp://x"}
    failures = sb.dispatch(flat)
    assert len(failures) == 1 and "live_rtsp_stream_started" in failures[0]
    sb.compile("scripts/n", "assert(SEEN == 1)")
    assert sb.run_script("n") is None


SEED = """local params = ...
if params.event == "audio_stream_error" then
    local cameras = require("cameras")
    cameras.delete_audio_stream(params.streamId)
end
"""


@pytest.mark.parametrize("event_name", ["audio_stream_error", "audio_stream_stopped"])
def test_the_seed_handler_runs_unchanged(host: FakeHost, event_name: str) -> None:
    sb = make(host, permissions=("cameras",))
    sb.compile("scripts/handler", SEED.replace("audio_stream_error", event_name))
    sid, err = sb.subscribe(f"HUB:{PID}/scripts/handler")
    assert err is None and sid
    assert sb.dispatch({"event": "audio_stream_started", "streamId": "a1"}) == []
    assert sb.dispatch({"event": event_name, "streamId": "a1", "errorMessage": "x"}) == []
    assert host.calls == [("cameras.delete_audio_stream", f"{HUB}handler:4", ("a1",))]


def test_the_second_seed_example_runs_unchanged(host: FakeHost) -> None:
    sb = make(host, permissions=("cameras",))
    host.answers["cameras.add_camera_stream"] = (True, "stream-1")
    ok(sb, """local cameras = require("cameras")
cameras.add_camera_stream("588b7eb528b12d03be86f36f", "Camera Name",
    "rtsp://user:secret@127.0.0.1:8554/cam", "Hall camera")
cameras.create_live_rtsp_stream("588b7eb528b12d03be86f36f")
""", name="add")
    assert host.calls == [
        ("cameras.add_camera_stream", f"{HUB}add:2", (
            "588b7eb528b12d03be86f36f", "Camera Name",
            "rtsp://user:secret@127.0.0.1:8554/cam", "Hall camera")),
        ("cameras.create_live_rtsp_stream", f"{HUB}add:4", ("588b7eb528b12d03be86f36f",)),
    ]


def test_a_host_error_is_a_lua_error_naming_the_function(sb: LuaSandbox, host: FakeHost) -> None:
    message = "cameras.get_camera_streams: argument #1 'cameraId' must be a string, got number"
    host.answers["cameras.get_camera_streams"] = (False, message)
    err = run(sb, """local cameras = require("cameras")
local ok, err = pcall(cameras.get_camera_streams, 5)
print(ok, err)
local ok2, err2 = pcall(function()
  local streams = cameras.get_camera_streams(6)
end)
print(ok2, err2)
cameras.get_camera_streams(7)
""")
    assert err == f"{HUB}t:8: {message}"
    assert host.messages == [f"false\t{HUB}t:2: {message}", f"false\t{HUB}t:5: {message}"]
    assert [c[1:] for c in host.calls] == [(f"{HUB}t:2", (5,)), (f"{HUB}t:5", (6,)),
                                           (f"{HUB}t:8", (7,))]


def test_an_unknown_api_function_is_simply_absent(sb: LuaSandbox) -> None:
    err = fails(sb, 'require("cameras").format_disk()')
    assert "attempt to call a nil value (field 'format_disk')" in err


def test_logging_with_a_table_logs_json(sb: LuaSandbox, host: FakeHost) -> None:
    ok(sb, """local logging = require("logging")
logging.info({a = 1, list = {1, 2}, nested = {b = "c"}})
logging.warning("plain text")
logging.debug(42)
for _, level in ipairs({"notice", "error", "critical"}) do logging[level](level) end
print(pcall(logging.info, "a", "b"))
""")
    level, where, msg = host.logs[0]
    assert (level, where) == ("info", f"{HUB}t:2")
    assert json.loads(msg) == {"a": 1, "list": [1, 2], "nested": {"b": "c"}}
    assert host.logs[1:] == [
        ("warning", f"{HUB}t:3", "plain text"),
        ("debug", f"{HUB}t:4", "42"),
        ("notice", f"{HUB}t:5", "notice"),
        ("error", f"{HUB}t:5", "error"),
        ("critical", f"{HUB}t:5", "critical"),
        ("info", f"{HUB}t:6", f"false\t{HUB}t:6: logging.info: takes one argument"),
    ]


def test_print_goes_to_host_log(sb: LuaSandbox, host: FakeHost) -> None:
    ok(sb, 'print(1, "a", nil, true, 2.5)\nprint()\nprint(setmetatable({}, '
           '{__tostring = function() return "obj" end}))')
    assert host.logs == [
        ("info", f"{HUB}t:1", "1\ta\tnil\ttrue\t2.5"),
        ("info", f"{HUB}t:2", ""),
        ("info", f"{HUB}t:3", "obj"),
    ]


def test_logging_needs_its_permission(host: FakeHost) -> None:
    sb = make(host, permissions=("cameras",))
    assert "module 'logging' is not granted" in fails(sb, 'require("logging").info("x")')
    ok(sb, 'print("print needs no permission")')
    assert host.messages == ["print needs no permission"]


def test_a_timer_function_runs_under_the_budget(sb: LuaSandbox, host: FakeHost) -> None:
    ids = iter(["t1", "t2"])

    def set_timeout(delay: int, fn: Any, *rest: Any) -> tuple[bool, str]:
        timer_id = next(ids)
        sb.keep_timer_function(timer_id, fn)
        return True, timer_id

    host.answers["timer.set_timeout"] = set_timeout
    ok(sb, """
        local timer = require("timer")
        ID1 = timer.set_timeout(10, function(args) print("tick", args.timerId) end)
        ID2 = timer.set_timeout(10, function() while true do end end)
    """)
    assert sb.run_timer_function("t1", {"timerId": "t1"}) is None
    assert host.messages == ["tick\tt1"]
    start = time.monotonic()
    assert BUDGET in str(sb.run_timer_function("t2", {"timerId": "t2"}))
    assert time.monotonic() - start < 2.0
    sb.drop_timer_function("t2")
    assert sb.run_timer_function("t2", {}) == "timer t2 has no function"
    assert sb.run_timer_function("t1", {"timerId": "t1"}) is None


# -- after a budget error hooks stay off until a pcall boundary: no plugin code may run then ----


def test_an_xpcall_handler_does_not_run_after_a_budget_error(
    sb: LuaSandbox, host: FakeHost
) -> None:
    """Lua calls the message handler for the hook's own error, with hooks still off: a looping
    handler would run unbounded (this one gives up after 3e7 rounds and leaves a mark)."""
    err = timed_fail(sb, """
        local n = 0
        local ok, e = xpcall(function() while true do end end, function(e)
          while n < 3e7 do n = n + 1 end
          UNHOOKED = n
          return e
        end)
        print(ok, e)
    """)
    assert BUDGET in err
    ok(sb, "print(UNHOOKED)", name="check")
    assert host.messages[-1] == "nil"


def test_xpcall_still_calls_its_handler_for_ordinary_errors(sb: LuaSandbox, host: FakeHost) -> None:
    ok(sb, """
        print(xpcall(function(a, b) error(a .. b) end, function(e) return "handled: " .. e end,
                     "x", "y"))
        print(xpcall(function(a) return a * 2 end, print, 21))
        print(pcall(xpcall, function() end, nil))
    """)
    assert host.messages[0] == f"false\thandled: {HUB}t:2: xy"
    assert host.messages[1] == "true\t42"
    assert host.messages[2] == (
        f"false\t{HUB}t:5: bad argument #2 to 'xpcall' (function expected, got nil)")


def test_close_of_a_coroutine_killed_by_the_budget_runs_no_plugin_code(
    sb: LuaSandbox, host: FakeHost
) -> None:
    ok(sb, """
        KILLED = coroutine.create(function()
          local guard <close> = setmetatable({}, {__close = function()
            local n = 0
            while n < 3e7 do n = n + 1 end
            UNHOOKED = n
          end})
          while true do end
        end)
        local ok, e = coroutine.resume(KILLED)
        print(ok, e)
        print(coroutine.close(KILLED))
    """)
    assert host.messages[0] == f"false\t{HUB}t:8: {BUDGET}"
    assert host.messages[1] == f"false\t{BUDGET} (its to-be-closed variables stay open)"
    ok(sb, "print(coroutine.close(KILLED)); print(UNHOOKED)", name="later")
    assert host.messages[2:] == [f"false\t{BUDGET} (its to-be-closed variables stay open)", "nil"]


def test_close_of_an_ordinary_coroutine_runs_its_close_handlers(
    sb: LuaSandbox, host: FakeHost
) -> None:
    ok(sb, """
        local co = coroutine.create(function()
          local guard <close> = setmetatable({}, {__close = function() CLOSED = true end})
          coroutine.yield(1)
        end)
        print(coroutine.resume(co))
        print(coroutine.close(co), CLOSED, coroutine.status(co))
    """)
    assert host.messages == ["true\t1", "true\ttrue\tdead"]


def test_a_looping_close_handler_of_a_suspended_coroutine_is_stopped(sb: LuaSandbox) -> None:
    err = timed_fail(sb, """
        local co = coroutine.create(function()
          local guard <close> = setmetatable({}, {__close = function() while true do end end})
          coroutine.yield()
        end)
        coroutine.resume(co)
        local ok, e = coroutine.close(co)
        error(e, 0)
    """)
    assert BUDGET in err


def test_a_require_cycle_fails_cleanly(sb: LuaSandbox, host: FakeHost) -> None:
    sb.compile("scripts/a", 'return require("b")')
    sb.compile("scripts/b", 'return require("a")')
    err = timed_fail(sb, 'require("a")')
    assert err.startswith(HUB) and (BUDGET in err or "stack overflow" in err), err
    ok(sb, "print('alive')", name="after")
    assert host.messages == ["alive"]
