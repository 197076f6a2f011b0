"""kie.ai: sunoapi.org's callbacks (:mod:`receiver.providers.sunoapi`), optionally signed.

With a webhookHmacKey set in the account (https://docs.kie.ai/common-api/webhook-verification),
each callback carries ``X-Webhook-Timestamp`` (unix seconds) and ``X-Webhook-Signature``:
base64 of HMAC-SHA256(key, ``{task_id}.{timestamp}``), ``task_id`` being the body's
``data.task_id``. It covers no part of the body: it proves the sender knows the key and when it
signed (checked within the tolerance, both ways, constant-time against each key of
``hmac_key``), not what the body says. So the body is still only let in by the receiver's
per-task token (or the path secret) and confirmed by a poll before it takes effect, as
sunoapi.org's. With ``hmac_key`` set, an unsigned callback is refused.

kie.ai's download links (``POST /api/v1/common/download-url``) last 20 minutes
(https://docs.kie.ai/common-api/download-url); its files 14 days (its extend docs).
"""

from __future__ import annotations

from typing import Any

from receiver.clips import load, parse_identifier
from receiver.errors import PayloadError
from receiver.providers import Inbound, refuse
from receiver.providers.sunoapi import SunoapiAdapter, SunoapiClient, first
from receiver.signatures import Scheme, Verified, verify_kie


class KieClient(SunoapiClient):
    provider = "kie"
    service = "kie.ai"
    log_name = "kie"


class KieAdapter(SunoapiAdapter):
    """kie.ai (see the module docstring)."""

    name = "kie"
    default_base_url = "https://api.kie.ai"
    link_lifetime_s = 20 * 60.0

    def authenticate(self, inbound: Inbound) -> Verified | None:
        keys = getattr(self.table, "hmac_key", None) or ()
        if not keys:
            return None
        task_id = signed_task_id(inbound.body)
        if task_id is None:
            raise refuse("malformed_signature", Scheme.KIE,
                         "the body names no task_id for the signature to cover")
        timestamp = verify_kie(keys, inbound.headers, task_id, tolerance_s=self.tolerance_s,
                               now=self.clock.now())
        # a delivery with no id header is named by a digest of its body, not of what was
        # signed (the same task and second for different bodies)
        return Verified(scheme=Scheme.KIE, timestamp=timestamp, signed_content=inbound.body)

    @property
    def client_class(self) -> type[SunoapiClient]:
        return KieClient


def signed_task_id(body: bytes) -> str | None:
    """The task id the signature covers: the body's ``data.task_id`` (or ``taskId``)."""
    try:
        document: Any = load(body)
    except PayloadError:
        return None
    if not isinstance(document, dict):
        return None
    data = document.get("data")
    found = first(data, "task_id", "taskId") if isinstance(data, dict) else None
    return parse_identifier(found if found is not None else first(document, "task_id",
                                                                   "taskId"))
