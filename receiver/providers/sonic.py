"""Sonic, the default provider, as the first adapter: the shape every other provider's
callback is read into (:mod:`receiver.payloads`), its signatures (:mod:`receiver.signatures`),
its client (:mod:`receiver.sonic.client`). Its endpoint, ``/webhooks/sonic``, stays
:class:`receiver.webhook.WebhookEndpoint`'s own fast path; this adapter is how the rest of the
receiver (replay, reconcile, confirmation) reads a Sonic delivery or poll like any other
provider's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

from receiver.clips import read_clips
from receiver.clock import Clock
from receiver.config import ProviderTable
from receiver.payloads import Callback, envelope, try_parse
from receiver.providers import SONIC, Adapter, Inbound, ProviderClient
from receiver.signatures import Scheme, Verified, Verifier

if TYPE_CHECKING:
    from receiver.settings import Settings

EVENT_HEADER = "x-webhook-event"


class SonicAdapter(Adapter):
    """Sonic (see the module docstring); configured by ``[receiver]``, not a provider table."""

    name = SONIC
    covers_body = True

    def __init__(self, settings: Settings, *, clock: Clock) -> None:
        super().__init__(ProviderTable(), tolerance_s=settings.signature_tolerance_s, clock=clock)
        self.verifier = None if settings.insecure_no_verify else Verifier(
            settings.webhook_secrets, settings.schemes,
            tolerance_s=settings.signature_tolerance_s, clock=clock)

    def authenticate(self, inbound: Inbound) -> Verified | None:
        if self.verifier is None:
            return Verified(scheme=Scheme.NONE, timestamp=None, signed_content=inbound.body)
        return self.verifier.verify(inbound.headers, inbound.body)

    def parse(self, body: bytes, headers: Mapping[str, str] | None = None,
              ) -> tuple[Callback | None, str | None]:
        return try_parse(body, event_header=(headers or {}).get(EVENT_HEADER))

    def callback(self, document: Mapping[str, Any], headers: Mapping[str, str]) -> Callback:
        return envelope(document, read_clips(document.get("data")),
                        event_header=headers.get(EVENT_HEADER))

    def poll_callback(self, document: Mapping[str, Any], task_id: str) -> Callback:
        return envelope(document, read_clips(document.get("data")), task_id_hint=task_id)

    def client(self, http: httpx.AsyncClient) -> ProviderClient | None:
        return None  # Sonic's client is receiver.sonic.client.SonicClient, as ever
