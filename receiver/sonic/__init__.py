"""The Sonic upstream: its contract (:mod:`.contract`), a typed client (:mod:`.client`) and a
local sandbox that plays the service over real HTTP (:mod:`.sandbox`).

Nothing is imported here, so importing the pure contract never pulls in httpx or Starlette.
"""
