"""Camera events: the catalogue of event types (``hubruntime.events.catalogue``) and what uses it.

Kept empty on purpose: importing the package must not pull in any submodule, so a process that
needs only part of it (the Lua worker, a tool) pays for nothing else.
"""
