"""A local server that plays the Sonic API for tests and demos: real HTTP, real signed
webhooks, real audio bytes, credits, and faults on demand.

:func:`create_sandbox_app` builds it (see :mod:`.app` for the endpoints), :class:`SandboxConfig`
configures it, :mod:`.faults` describes what it can do wrong on purpose.
"""

from __future__ import annotations

from receiver.sonic.sandbox.app import Sandbox, create_sandbox_app
from receiver.sonic.sandbox.config import SandboxConfig, Schedule, Speed
from receiver.sonic.sandbox.faults import (
    EventDrop,
    FaultConfig,
    LinkFaults,
    MediaFault,
    MediaFaultKind,
)

__all__ = [
    "EventDrop",
    "FaultConfig",
    "LinkFaults",
    "MediaFault",
    "MediaFaultKind",
    "Sandbox",
    "SandboxConfig",
    "Schedule",
    "Speed",
    "create_sandbox_app",
]
