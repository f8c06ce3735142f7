"""The Lua sandbox of one plugin: a ``lupa.lua54`` runtime with its escapes closed and its limits set.

Pure and in-process: it knows nothing of sockets or the hub. ``worker.py`` drives it inside the
plugin's own process (so a C function that never returns can be killed), and ``plugin check``
uses it directly to compile scripts.

Why each piece:
- ``lupa.lua54`` is imported explicitly: plain ``import lupa`` gives Lua 5.5 now, and LuaJIT's
  count hook does not stop compiled loops (``dependency-notes.md``).
- Plugins never see a Python object. Host functions are upvalues of Lua closures built by the
  bootstrap chunk, and ``debug`` is gone, so no script can reach them; values cross as plain Lua
  values. The attribute filter is a second wall, not the first.
- The instruction budget is a count hook armed on every coroutine (a coroutine has its own hook)
  and reset per run (the count is cumulative). Once spent, the hook fires on every instruction, so
  a ``pcall`` around the loop cannot swallow the error for long.
- The string metatable is locked (``__metatable``) and the plugin gets copies of the standard
  tables, so tampering with ``string`` cannot change what ``("x"):rep`` does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import lupa.lua54 as lupa

HOOK_EVERY = 1000
"""Instructions between two count-hook calls: cheap enough, fine enough for a budget."""

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
local load, table_concat, collectgarbage = load, table.concat, collectgarbage

-- close the shared string metatable: getmetatable("") gives false, and the original string
-- table behind method calls loses dump.
local string_mt = getmetatable("")
string_mt.__metatable = false
string.dump = nil

-- instruction budget ------------------------------------------------------------------------
local ticks_left = budget_ticks
local spent = false
local threads = setmetatable({}, {__mode = "k"})
local hook, run
hook = function()
  ticks_left = ticks_left - 1
  if ticks_left < 0 then
    if getinfo(2, "f").func == run then return end  -- the run wrapper itself, after pcall
    if not spent then
      spent = true
    end
    sethook(hook, "", 1)  -- from now on every instruction fails, so pcall cannot hide the loop
    error("instruction budget exceeded", 2)
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
  local co = co_create(f)
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

-- the plugin's globals ----------------------------------------------------------------------
local env = {}
local std = {
  string = sandbox_copy(string), table = sandbox_copy(table), math = sandbox_copy(math),
  utf8 = sandbox_copy(utf8), coroutine = co_lib,
}
std.string.dump = nil
for _, name in ipairs({"assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal",
                       "rawget", "rawlen", "rawset", "select", "setmetatable", "getmetatable",
                       "tonumber", "tostring", "type", "xpcall", "_VERSION"}) do
  env[name] = _G[name]
end
for name, lib in pairs(std) do env[name] = lib end
env.os = {time = os.time, clock = os.clock, date = os.date, difftime = os.difftime}
env._G = env
env.collectgarbage = function(opt, ...)
  if opt == nil or opt == "collect" or opt == "count" or opt == "step" then
    return collectgarbage(opt, ...)
  end
  error("collectgarbage: option '" .. tostring(opt) .. "' is not allowed in a plugin", 2)
end
env.load = function(chunk, name, mode, chunk_env)
  if mode ~= nil and mode ~= "t" then
    return nil, "load: only text chunks may be loaded in a plugin (mode 't')"
  end
  return load(chunk, name, "t", chunk_env or env)
end

-- where am I: "HUB:<id>/scripts/<name>:<line>" of the calling plugin code
local function caller(level)
  local info = getinfo(level + 1, "Sl")
  if not info then return "?" end
  local src = info.source or "?"
  if src:sub(1, 1) == "=" or src:sub(1, 1) == "@" then src = src:sub(2) end
  return src .. ":" .. tostring(info.currentline or 0)
end

local function call(name)
  return function(...)
    local ok, v = host_call(name, caller(2), ...)
    if not ok then error(v, 2) end
    return v
  end
end

local function render(...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  return table_concat(parts, "\t")
end
env.print = function(...) host_log("info", caller(2), render(...)) end

local modules = {}
local function level_fn(level)
  return function(msg, ...)
    if select("#", ...) > 0 then error("logging." .. level .. ": takes one argument", 2) end
    local ok, v = host_call("logging.format", caller(2), msg)
    if not ok then error(v, 2) end
    host_log(level, caller(2), v)
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
    error("require: module name must be a string, got " .. type(name), 2)
  end
  if modules[name] then
    if not granted_set[name] then
      error(string_format("require: module '%s' is not granted to plugin %s " ..
                          "(add it to \"permissions\" in config.json)", name, plugin_id), 2)
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
  error(string_format("require: module '%s' is not available to plugin %s", name, plugin_id), 2)
end

local function find(name)
  local addr = address(name)
  return addr and scripts[addr], addr
end

-- one run: reset the budget, call, report
run = function(fn, ...)
  reset_budget()
  local ok, err = pcall(fn, ...)
  sethook()
  if ok then return true, nil end
  return false, tostring(err)
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
  if not fn then return nil, "cameras.subscribe: no script '" .. tostring(name) .. "' in plugin " .. plugin_id end
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
        boot = lua.execute(
            _BOOTSTRAP,
            host_call,
            host_log,
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
        failures = self._dispatch(self._lua.table_from(event, recursive=True))
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
    def to_lua(self, value: Any) -> Any:
        if isinstance(value, dict | list | tuple):
            return self._lua.table_from(value, recursive=True)
        return value


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
