"""The operator's console: a JSON read API with actions (:mod:`.api`), the dashboard at
``/ui`` (:mod:`.ui`), ``/metrics`` (:mod:`.metrics`) and ``/openapi.json`` (:mod:`.openapi`).
Its routes are mounted behind :class:`receiver.console.session.AdminAuth`."""

from __future__ import annotations

from starlette.routing import BaseRoute


def console_routes() -> list[BaseRoute]:
    """Every route of the console, to mount behind the admin authentication."""
    from receiver.console.api import api_routes
    from receiver.console.metrics import metrics_routes
    from receiver.console.openapi import openapi_routes
    from receiver.console.ui import ui_routes

    return [*api_routes(), *metrics_routes(), *openapi_routes(), *ui_routes()]
