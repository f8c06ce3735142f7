"""hubruntime: the camera runtime of a home-automation hub.

Kept import-free on purpose: the Lua plugin worker imports ``hubruntime.lua.worker`` and must not
pay for trio, sqlite or the event catalogue (each worker is budgeted at 20 MB RSS).
"""

__version__ = "0.1.0"
