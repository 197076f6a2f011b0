"""Who the client is behind a reverse proxy: ``X-Forwarded-For``, ``-Proto`` and ``-Host``,
believed only from the peers the operator trusts (``RECEIVER_TRUSTED_PROXIES``).

:class:`ForwardedHeaders` is the one ASGI middleware that reads them, outermost, so that every
part of the app (the console's origin check, the session cookie's ``Secure`` flag, the audit
log's "from where", the login throttle) sees the same client, scheme and host. Invariants:

- With no trusted proxy (the default) the headers are ignored, whoever sends them: the scope
  is what the connection says.
- The client is found from the right of ``X-Forwarded-For``, skipping trusted proxies: the
  first address a trusted proxy did not add itself is the client (a client cannot forge its
  way past the last trusted hop). ``*`` trusts every peer, so the leftmost address is taken.
- The scheme and host are believed only when the immediate peer is trusted; the first value
  of a comma-separated list (the one the outermost proxy saw) is taken.

uvicorn's own proxy handling is switched off (:mod:`receiver.server`): it trusts 127.0.0.1 by
default, and knows no ``X-Forwarded-Host``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
SCHEMES = {"http": "http", "https": "https"}
WEBSOCKET_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


class TrustedProxies:
    """A set of addresses and networks, or every peer (``*``)."""

    def __init__(self, entries: Iterable[str]) -> None:
        items = [e.strip() for e in entries if e.strip()]
        self.everyone = "*" in items
        self.networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(e, strict=False) for e in items if e != "*")

    def __bool__(self) -> bool:
        return self.everyone or bool(self.networks)

    def __contains__(self, host: object) -> bool:
        if self.everyone:
            return True
        if not isinstance(host, str):
            return False
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:  # a unix socket path, a name: never a trusted proxy
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


def _values(scope: Scope, name: bytes) -> list[str]:
    """Every comma-separated value of every header ``name``, in order."""
    found: list[str] = []
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            found += [v.strip() for v in value.decode("latin-1").split(",") if v.strip()]
    return found


def forwarded_client(hops: list[str], trusted: TrustedProxies) -> str | None:
    """The client in an ``X-Forwarded-For`` list: the rightmost address a trusted proxy did
    not add (every hop trusted: the leftmost)."""
    for hop in reversed(hops):
        if hop not in trusted:
            return hop
    return hops[0] if hops else None


class ForwardedHeaders:
    """ASGI middleware: the client, scheme and host a trusted proxy forwarded, put in the
    scope (``client``, ``scheme``, the ``host`` header); nothing changes for anyone else."""

    def __init__(self, app: ASGIApp, *, trusted: Iterable[str]) -> None:
        self.app = app
        self.trusted = TrustedProxies(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.trusted and scope["type"] in ("http", "websocket"):
            peer = scope.get("client")
            if peer is not None and peer[0] in self.trusted:
                scope = self.forwarded(scope)
        await self.app(scope, receive, send)

    def forwarded(self, scope: Scope) -> Scope:
        scope = dict(scope)
        proto = _values(scope, b"x-forwarded-proto")
        if proto:
            schemes = WEBSOCKET_SCHEMES if scope["type"] == "websocket" else SCHEMES
            scheme = schemes.get(proto[0].lower())
            if scheme is not None:
                scope["scheme"] = scheme
        hosts = _values(scope, b"x-forwarded-host")
        if hosts:
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"host"]
            scope["headers"] = [*headers, (b"host", hosts[0].encode("latin-1"))]
        client = forwarded_client(_values(scope, b"x-forwarded-for"), self.trusted)
        if client is not None:
            scope["client"] = (client.strip("[]"), 0)
        return scope
