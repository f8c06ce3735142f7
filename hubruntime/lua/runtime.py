"""The Lua sandbox of one plugin: a ``lupa.lua54`` runtime, its escapes closed, its limits set.

Pure and in-process: it knows nothing of sockets or the hub. ``worker.py`` drives it inside the
plugin's own process (so a C function that never returns can be killed), and ``plugin check``
uses it directly to compile scripts.

Why each piece:
- ``lupa.lua54`` is imported explicitly: plain ``import lupa`` gives Lua 5.5 now, and LuaJIT's
  count hook does not stop compiled loops (``dependency-notes.md``).
- Plugins never see a Python object. Host functions are upvalues of Lua closures built by the
  bootstrap chunk, and ``debug`` is gone, so no script can reach them; values cross as plain Lua
  values. lupa would pass a returned dict, an object or a raised exception through as userdata,
  so the host callbacks are wrapped (``_call_host``): data is converted or refused, exceptions
  become error text. Strings going to Python are made valid UTF-8 first, as a failed decode
  would also surface as a Python exception object. The attribute filter is a last wall.
- The instruction budget is a count hook armed on every coroutine (a coroutine has its own hook)
  and reset per run (the count is cumulative). Once spent, the hook fires on every instruction, so
  a ``pcall`` around the loop cannot swallow the error for long. Plugin code never runs unhooked:
  an error object's ``__tostring`` is called inside the run, and ``__gc`` finalizers (which the
  collector may run between runs, when no hook is armed) are refused by ``setmetatable``.
- The string metatable is locked (``__metatable``) and the plugin gets copies of the standard
  tables, so tampering with ``string`` cannot change what ``("x"):rep`` does.
- Errors name the plugin's ``HUB:<id>/scripts/<name>:<line>``, never a line of the bootstrap:
  ``caller`` skips C frames and the bootstrap's own, and wrappers re-raise the errors of the C
  functions they call at the plugin's line (``relay``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import lupa.lua54 as lupa

HOOK_EVERY = 1000
"""Instructions between two count-hook calls: cheap enough, fine enough for a budget."""

_FLAT = frozenset({str, int, float, bool, type(None)})
"""Value types ``table_from`` turns into plain Lua values (a bad str or int still raises)."""

HUB_MODULES = ("cameras", "logging", "timer", "storage", "json")
LOCAL_API = ("cameras.subscribe", "cameras.unsubscribe", "timer.set_timeout",
             "timer.set_interval", "timer.cancel")
"""Functions every plugin has; the worker or the hub's timer module serves them."""

# The bootstrap runs once with the full standard library, keeps private references to what it
# needs, and returns the functions the Python side drives. Everything a plugin reaches is built
# here, inside closures.
_BOOTSTRAP = r"""
local host_call, host_log, plugin_id, granted, api, budget_ticks, hook_every = ...

local sethook, getinfo = debug.sethook, debug.getinfo
local co_create, co_wrap, co_running = coroutine.create, coroutine.wrap, coroutine.running
local error, pcall, type, tostring, select, pairs, ipairs, next =
      error, pcall, type, tostring, select, pairs, ipairs, next
local setmetatable, rawset, string_format = setmetatable, rawset, string.format
local load, table_concat, collectgarbage, utf8_len = load, table.concat, collectgarbage, utf8.len

-- close the shared string metatable: getmetatable("") gives false, and the original string
-- table behind method calls loses dump.
local string_mt = getmetatable("")
string_mt.__metatable = false
string.dump = nil

-- Every string that crosses into Python must be UTF-8: lupa decodes it on the way, and a failed
-- decode would hand the plugin a Python exception object (or raise out of run_script).
local function valid_text(s)
  if utf8_len(s) then return s end
  local out, i, n = {}, 1, #s
  while i <= n do
    local ok, bad = utf8_len(s, i)
    if ok then out[#out + 1] = s:sub(i) break end
    out[#out + 1] = s:sub(i, bad - 1)
    out[#out + 1] = "\u{FFFD}"
    i = bad + 1
  end
  return table_concat(out)
end

-- where am I: "HUB:<id>/scripts/<name>:<line>" of the nearest plugin code up the stack, skipping
-- C frames (so pcall(cameras.f, ...) still names the script and line) and this chunk's frames (so
-- an error raised in a wrapper here, or by the hook while in one, names the plugin's line)
local boot_source = getinfo(1, "S").source
local function caller(level)
  level = level + 1
  local info = getinfo(level, "Sl")
  while info and (info.what == "C" or info.source == boot_source) do
    level = level + 1
    info = getinfo(level, "Sl")
  end
  if not info then return "?" end
  local src = info.source or "?"
  local first = src:sub(1, 1)
  -- a script's full name; for a chunk named by its text (load), Lua's short form
  if first == "=" or first == "@" then src = src:sub(2) else src = info.short_src or "?" end
  return valid_text(src .. ":" .. tostring(info.currentline or 0))
end

-- raise msg as the error of the plugin code at `where` (error(msg, 2) would name pcall, a C
-- function, when the plugin calls pcall(cameras.f), and cut long names to 60 characters)
local function fail(where, msg)
  error(where .. ": " .. tostring(msg), 0)
end

-- a C function reports an error at its caller's line, which for a wrapper is a line of this
-- chunk: call it protected and re-raise at the plugin's line (it runs no plugin code that could
-- raise through it: load and coroutine.close return such errors as values)
local function relay(ok, ...)
  if ok then return ... end
  fail(caller(1), (...))
end

-- instruction budget ------------------------------------------------------------------------
local ticks_left = budget_ticks
local spent = false
local threads = setmetatable({}, {__mode = "k"})
-- An error raised inside a hook leaves that thread with hooks off until the nearest pcall
-- boundary puts them back. Until then no plugin code may run: not an xpcall message handler
-- (see env.xpcall), not the __close of a coroutine the budget killed (see co_lib.close).
local killed = setmetatable({}, {__mode = "k"})
local hook, run
hook = function()
  ticks_left = ticks_left - 1
  if ticks_left < 0 then
    if getinfo(2, "f").func == run then return end  -- the run wrapper itself, after pcall
    spent = true
    local co, is_main = co_running()
    if not is_main then killed[co] = true end
    sethook(hook, "", 1)  -- from now on every instruction fails, so pcall cannot hide the loop
    fail(caller(2), "instruction budget exceeded")
  end
end

local function arm(co)
  if co then sethook(co, hook, "", spent and 1 or hook_every) else sethook(hook, "", hook_every) end
end

local function reset_budget()
  ticks_left = budget_ticks
  spent = false
  sethook(hook, "", hook_every)
  for co in pairs(threads) do sethook(co, hook, "", hook_every) end
end

local function sandbox_copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

local co_lib = sandbox_copy(coroutine)
co_lib.create = function(f)
  local co = relay(pcall(co_create, f))
  threads[co] = true
  arm(co)
  return co
end
co_lib.wrap = function(f)
  local co = co_lib.create(f)
  local resume = coroutine.resume
  return function(...)
    local res = table.pack(resume(co, ...))
    if not res[1] then error(res[2], 2) end
    return table.unpack(res, 2, res.n)
  end
end
local co_close, co_status = coroutine.close, coroutine.status
co_lib.close = function(co)
  if killed[co] and co_status(co) == "dead" then
    return false, "instruction budget exceeded (its to-be-closed variables stay open)"
  end
  return relay(pcall(co_close, co))
end

-- the plugin's globals ----------------------------------------------------------------------
local env = {}
local std = {
  string = sandbox_copy(string), table = sandbox_copy(table), math = sandbox_copy(math),
  utf8 = sandbox_copy(utf8), coroutine = co_lib,
}
std.string.dump = nil
for _, name in ipairs({"assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal",
                       "rawget", "rawlen", "rawset", "select", "getmetatable",
                       "tonumber", "tostring", "type", "_VERSION"}) do
  env[name] = _G[name]
end
local xpcall = xpcall
env.xpcall = function(f, handler, ...)
  if type(handler) ~= "function" then return relay(pcall(xpcall, f, handler, ...)) end
  return xpcall(f, function(e)
    if spent then return e end  -- maybe raised by the hook: hooks are off, skip plugin code
    return handler(e)
  end, ...)
end
for name, lib in pairs(std) do env[name] = lib end
env.os = {time = os.time, clock = os.clock, date = os.date, difftime = os.difftime}
env._G = env
-- a finalizer runs whenever the collector gets to it, also between runs with no hook armed (in a
-- later table_from, in LuaSandbox.collect), so it would escape the budget: refuse __gc.
env.setmetatable = function(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    fail(caller(1), "setmetatable: __gc finalizers are not allowed in a plugin")
  end
  return relay(pcall(setmetatable, t, mt))
end
env.collectgarbage = function(opt, ...)
  if opt == nil or opt == "collect" or opt == "count" or opt == "step" then
    return relay(pcall(collectgarbage, opt, ...))
  end
  fail(caller(1), "collectgarbage: option '" .. tostring(opt) .. "' is not allowed in a plugin")
end
env.load = function(chunk, name, mode, chunk_env)
  if mode ~= nil and mode ~= "t" then
    return nil, "load: only text chunks may be loaded in a plugin (mode 't')"
  end
  return relay(pcall(load, chunk, name, "t", chunk_env or env))
end

local function call(name)
  return function(...)
    local where = caller(2)
    for i = 1, select("#", ...) do
      local a = select(i, ...)
      if type(a) == "string" and not utf8_len(a) then
        fail(where, string_format("%s: argument #%d is not valid UTF-8 text", name, i))
      end
    end
    local ok, v = host_call(name, where, ...)
    if not ok then fail(where, v) end
    return v
  end
end

local function text_of(v)
  local ok, s = pcall(tostring, v)
  if ok then return s end
  if s == "'__tostring' must return a string" then fail(caller(1), s) end
  error(s, 0)  -- raised by the plugin's own __tostring, with its own file:line
end

local function render(...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = text_of((select(i, ...))) end
  return valid_text(table_concat(parts, "\t"))
end
env.print = function(...)
  local where = caller(2)
  local err = host_log("info", where, render(...))
  if err then fail(where, err) end
end

local modules = {}
local function level_fn(level)
  return function(msg, ...)
    local where = caller(2)
    if select("#", ...) > 0 then fail(where, "logging." .. level .. ": takes one argument") end
    if type(msg) == "string" then msg = valid_text(msg) end
    local ok, v = host_call("logging.format", where, msg)
    if not ok then fail(where, v) end
    local err = host_log(level, where, v)
    if err then fail(where, err) end
  end
end
modules.logging = {}
for _, level in ipairs({"debug", "info", "notice", "warning", "error", "critical"}) do
  modules.logging[level] = level_fn(level)
end
modules.json = {encode = call("json.encode"), decode = call("json.decode")}
for _, m in ipairs({"cameras", "timer", "storage"}) do modules[m] = {} end
for _, full in ipairs(api) do
  local m, fn = full:match("^(%w+)%.([%w_]+)$")
  if m and modules[m] and m ~= "logging" and m ~= "json" then modules[m][fn] = call(full) end
end

-- scripts -----------------------------------------------------------------------------------
local scripts = {}      -- address -> compiled function
local loaded = {}       -- address -> value returned by require
local prefix = "HUB:" .. plugin_id .. "/"

local function address(name)
  if type(name) ~= "string" then return nil end
  if name:sub(1, #prefix) == prefix then name = name:sub(#prefix + 1) end
  if name:sub(1, 4) == "HUB:" then return nil end
  if name:sub(1, 8) ~= "scripts/" then name = "scripts/" .. name end
  return prefix .. name
end

local function compile(name, source)
  local addr = address(name)
  if not addr then return nil, "bad script name " .. tostring(name) end
  local fn, err = load(source, "=" .. addr, "t", env)
  if not fn then return nil, err end
  scripts[addr] = fn
  return true, nil
end

local granted_set = {}
for _, m in ipairs(granted) do granted_set[m] = true end

env.require = function(name)
  if type(name) ~= "string" then
    fail(caller(1), "require: module name must be a string, got " .. type(name))
  end
  if modules[name] then
    if not granted_set[name] then
      fail(caller(1), string_format("require: module '%s' is not granted to plugin %s " ..
                                    "(add it to \"permissions\" in config.json)", name, plugin_id))
    end
    return modules[name]
  end
  if std[name] then return std[name] end
  local addr = address(name)
  if addr and scripts[addr] then
    if loaded[addr] == nil then
      local v = scripts[addr]()
      loaded[addr] = (v == nil) and true or v
    end
    return loaded[addr]
  end
  fail(caller(1), string_format("require: module '%s' is not available to plugin %s", name,
                                plugin_id))
end

local function find(name)
  local addr = address(name)
  return addr and scripts[addr], addr
end

-- one run: reset the budget, call, report
run = function(fn, ...)
  reset_budget()
  local ok, err = pcall(fn, ...)
  if not ok and type(err) ~= "string" then
    -- a __tostring metamethod is plugin code: it runs here, still under the budget
    local tok, text = pcall(tostring, err)
    err = tok and type(text) == "string" and text
          or "(an error object that could not be turned into text)"
  end
  sethook()
  if ok then return true, nil end
  return false, valid_text(err)
end

local function run_script(name, ...)
  local fn, addr = find(name)
  if not fn then return false, "no script " .. tostring(addr or name) end
  return run(fn, ...)
end

-- event fan-out into every subscribed function, in subscription order, one run each
local subs, sub_order, next_sub = {}, {}, 0
local function subscribe(name)
  local fn, addr = find(name)
  if not fn then
    return nil, "cameras.subscribe: no script '" .. tostring(name) .. "' in plugin " .. plugin_id
  end
  next_sub = next_sub + 1
  local id = plugin_id .. "#" .. next_sub
  subs[id] = fn
  sub_order[#sub_order + 1] = id
  return id, nil
end
local function unsubscribe(id)
  if subs[id] == nil then return false end
  subs[id] = nil
  for i, v in ipairs(sub_order) do
    if v == id then table.remove(sub_order, i) break end
  end
  return true
end
local function dispatch(event)
  local failures
  for i = 1, #sub_order do
    local fn = subs[sub_order[i]]
    if fn then
      local ok, err = run(fn, event)
      if not ok then
        failures = failures or {}
        failures[#failures + 1] = err
      end
    end
  end
  return failures
end
local function subscriber_count() return #sub_order end

local timer_fns = {}
local function keep_timer_fn(id, fn) timer_fns[id] = fn end
local function run_timer_fn(id, args)
  local fn = timer_fns[id]
  if not fn then return false, "timer " .. tostring(id) .. " has no function" end
  return run(fn, args)
end
local function drop_timer_fn(id) timer_fns[id] = nil end

-- globals the plugin must not reach
for _, name in ipairs({"debug", "io", "os", "package", "dofile", "loadfile", "python", "require",
                       "load"}) do
  _G[name] = nil
end

return {
  compile = compile, run_script = run_script, dispatch = dispatch, subscribe = subscribe,
  unsubscribe = unsubscribe, subscriber_count = subscriber_count, env = env,
  keep_timer_fn = keep_timer_fn, run_timer_fn = run_timer_fn, drop_timer_fn = drop_timer_fn,
}
"""


class ScriptError(Exception):
    """A script that did not compile or failed at run time; the message carries file:line."""


HostCall = Callable[..., tuple[bool, Any]]
"""``host_call(name, where, *args) -> (ok, value_or_message)``; never raises into Lua."""
HostLog = Callable[[str, str, str], None]
"""``host_log(level, where, message)``."""


def _deny_attributes(obj: Any, name: Any, is_setting: bool) -> Any:
    raise AttributeError("access to Python objects is not allowed in a plugin")


@dataclass(frozen=True)
class Limits:
    max_memory: int = 32 << 20
    instruction_budget: int = 50_000_000


class LuaSandbox:
    """One plugin's Lua state. Not thread-safe: one owner drives it."""

    def __init__(
        self,
        plugin_id: str,
        permissions: tuple[str, ...],
        host_call: HostCall,
        host_log: HostLog,
        limits: Limits = Limits(),
        api_functions: tuple[str, ...] = (),
    ) -> None:
        self.plugin_id = plugin_id
        self.limits = limits
        self._lua = lupa.LuaRuntime(
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
            attribute_filter=_deny_attributes,
            max_memory=limits.max_memory,
        )
        lua = self._lua
        self._host_call = host_call
        self._host_log = host_log
        boot = lua.execute(
            _BOOTSTRAP,
            self._call_host,
            self._log_host,
            plugin_id,
            lua.table_from([p for p in permissions if p in HUB_MODULES]),
            lua.table_from(list(LOCAL_API + tuple(api_functions))),
            max(1, limits.instruction_budget // HOOK_EVERY),
            HOOK_EVERY,
        )
        self._compile = boot["compile"]
        self._run_script = boot["run_script"]
        self._dispatch = boot["dispatch"]
        self._subscribe = boot["subscribe"]
        self._unsubscribe = boot["unsubscribe"]
        self._subscriber_count = boot["subscriber_count"]
        self._keep_timer_fn = boot["keep_timer_fn"]
        self._run_timer_fn = boot["run_timer_fn"]
        self._drop_timer_fn = boot["drop_timer_fn"]
        self.table_from = lua.table_from

    # the host, as Lua sees it ------------------------------------------------------------
    def _call_host(self, name: str, where: str, *args: Any) -> tuple[bool, Any]:
        """``host_call`` behind a wall: what goes back to Lua is Lua data or an error text.

        lupa would hand a returned dict, object or raised exception to Lua as a Python object
        (userdata with lupa's metatable, ``__gc`` included); a plugin must never hold one. Sets,
        objects and unencodable text are refused here with a message naming the function.
        """
        try:
            ok, value = self._host_call(name, where, *args)
        except Exception as exc:  # nothing may raise into Lua
            return False, _text(f"{name}: {exc}")
        if not ok:
            return False, _text(value if isinstance(value, str) else f"{name}: {value}")
        try:
            return True, self.to_lua(value)
        except Exception as exc:  # ValueError, or a LuaMemoryError from table_from
            return False, _text(f"{name}: returned a value a plugin cannot hold: {exc}")

    def _log_host(self, level: str, where: str, msg: str) -> bytes | None:
        """``host_log``; a failure comes back as text for Lua to raise, never as an exception."""
        try:
            self._host_log(level, where, msg)
        except Exception as exc:  # nothing may raise into Lua
            return _text(f"logging.{level}: {exc}")
        return None

    # scripts -----------------------------------------------------------------------------
    def compile(self, name: str, source: str) -> None:
        """Compile ``scripts/<name>``; a syntax error raises ScriptError with file:line."""
        ok, err = self._compile(name, source)
        if not ok:
            raise ScriptError(str(err))

    def run_script(self, address: str, *args: Any) -> str | None:
        """Run a script by address with plain-Python args; returns the error text or None."""
        ok, err = self._run_script(address, *(self.to_lua(a) for a in args))
        return None if ok else str(err)

    def dispatch(self, event: Mapping[str, Any]) -> list[str]:
        """Run every subscribed script with the event table; returns the failures' messages."""
        failures = self._dispatch(self._event_table(event))
        return [] if failures is None else [str(v) for v in failures.values()]

    def subscribe(self, address: str) -> tuple[str | None, str | None]:
        sid, err = self._subscribe(address)
        return sid, err

    def unsubscribe(self, subscriber_id: str) -> bool:
        return bool(self._unsubscribe(subscriber_id))

    @property
    def subscriber_count(self) -> int:
        return int(self._subscriber_count())

    def keep_timer_function(self, timer_id: str, fn: Any) -> None:
        self._keep_timer_fn(timer_id, fn)

    def run_timer_function(self, timer_id: str, args: Any) -> str | None:
        ok, err = self._run_timer_fn(timer_id, self.to_lua(args))
        return None if ok else str(err)

    def drop_timer_function(self, timer_id: str) -> None:
        self._drop_timer_fn(timer_id)

    # memory --------------------------------------------------------------------------------
    def memory_used(self) -> int:
        return int(self._lua.get_memory_used() or 0)

    def collect(self) -> int:
        """Full GC (outside any run); returns the memory still used."""
        self._lua.execute("collectgarbage('collect')")
        return self.memory_used()

    # value conversion ------------------------------------------------------------------------
    def _event_table(self, event: Mapping[str, Any]) -> Any:
        """The event as a Lua table; a flat event of plain values (nearly all) takes
        ``table_from``'s fast path, anything else the checked ``to_lua``."""
        for k, v in event.items():
            if type(k) is not str or type(v) not in _FLAT:
                return self.to_lua(event)
        return self._lua.table_from(event)

    def to_lua(self, value: Any, _depth: int = 0) -> Any:
        """Plain Python data as Lua data: mappings and sequences become tables (1-based arrays).

        Anything else raises ValueError rather than reaching Lua as a Python object; an int
        beyond 64 bits becomes a float, as the same numeral does in Lua source. Values that are
        already Lua values of this runtime pass through.
        """
        if value is None or isinstance(value, bool | float | bytes):
            return value
        if isinstance(value, str):
            return value.encode()  # what lupa would do, but a lone surrogate fails here
        if isinstance(value, int):
            return value if -(1 << 63) <= value < (1 << 63) else float(value)
        if lupa.lua_type(value) is not None:
            return value
        if _depth >= 64:
            raise ValueError("data nested too deeply (or it contains itself)")
        if isinstance(value, Mapping):
            table = {}
            for k, v in value.items():
                if not isinstance(k, str | int | float) or isinstance(k, bool):
                    raise ValueError(f"a table key of type {type(k).__name__}")
                table[self.to_lua(k)] = self.to_lua(v, _depth + 1)
            return self._lua.table_from(table)
        if isinstance(value, list | tuple):
            return self._lua.table_from([self.to_lua(v, _depth + 1) for v in value])
        raise ValueError(f"a {type(value).__name__} cannot be handed to a plugin")


def _text(message: str) -> bytes:
    """An error text for Lua: UTF-8 bytes, whatever the message holds."""
    return message.encode("utf-8", "backslashreplace")


def lua_to_python(value: Any, _depth: int = 0) -> Any:
    """Plain Python data from a Lua value: a 1..n table is a list, any other table a dict.

    Functions, coroutines and userdata are refused: what leaves a plugin must be data.
    """
    if _depth > 64:
        raise ValueError("table nested too deeply (or it contains itself)")
    kind = lupa.lua_type(value)
    if kind is None:
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        raise ValueError(f"cannot pass a {type(value).__name__} value")
    if kind != "table":
        raise ValueError(f"cannot pass a Lua {kind}")
    items = list(value.items())
    n = len(items)
    if n and all(isinstance(k, int) and not isinstance(k, bool) for k, _ in items):
        keys = sorted(k for k, _ in items)
        if keys[0] == 1 and keys[-1] == n:
            return [lua_to_python(value[i], _depth + 1) for i in range(1, n + 1)]
    out: dict[str, Any] = {}
    for k, v in items:
        if isinstance(k, bool) or not isinstance(k, str | int | float):
            raise ValueError(f"table key of type {lupa.lua_type(k) or type(k).__name__} "
                             "cannot be converted")
        out[str(k)] = lua_to_python(v, _depth + 1)
    return out


def json_encode(value: Any) -> str:
    return json.dumps(lua_to_python(value), ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False)
