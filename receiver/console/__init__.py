"""The operator's console: a JSON read API with actions (:mod:`.api`) answering the shapes of
:mod:`.shapes`, the dashboard at ``/ui`` (:mod:`.ui`), ``/metrics`` (:mod:`.metrics`) and
``/openapi.json`` (:mod:`.openapi`), with its live updates (:mod:`.live`). Its routes are
mounted behind :class:`receiver.console.session.ConsoleAuth`.

The console reads the core (the runtime, the store's administration role, the records); the core
never imports the console, and no module here imports :mod:`receiver.app`, which mounts it.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from receiver.console.api import api_routes
from receiver.console.live import live_routes
from receiver.console.metrics import metrics_routes
from receiver.console.openapi import openapi_routes
from receiver.console.ui import ui_routes


def console_routes() -> list[BaseRoute]:
    """Every route of the console, to mount behind the admin authentication."""
    return [*api_routes(), *metrics_routes(), *openapi_routes(), *live_routes(), *ui_routes()]
