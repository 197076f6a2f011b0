"""apibox (api.box): sunoapi.org's callbacks and API (:mod:`receiver.providers.sunoapi`), its
failures sent as ``callbackType: "failed"`` (as the issue reports; the docs found show only
the shared code table, https://docs.api.box/suno-api/quickstart, so both spellings are read).
Nothing authenticates a callback: the receiver's per-task token (or the path secret) lets it
in, a poll confirms it.
"""

from __future__ import annotations

from receiver.providers.sunoapi import SunoapiAdapter, SunoapiClient


class ApiboxClient(SunoapiClient):
    provider = "apibox"
    service = "apibox"
    log_name = "apibox"


class ApiboxAdapter(SunoapiAdapter):
    """apibox (see the module docstring)."""

    name = "apibox"
    default_base_url = "https://api.api.box"
    link_lifetime_s = None  # not documented in what was found
    failure_stage = "failed"

    @property
    def client_class(self) -> type[SunoapiClient]:
        return ApiboxClient
