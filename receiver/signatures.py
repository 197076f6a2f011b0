"""Webhook signature schemes: verify on the raw bytes, before any parsing, and sign (for the
sandbox, the replay script and tests).

Three schemes, chosen by configuration:

``musicapi``
    ``X-Webhook-Signature: sha256=<hex>`` where hex is HMAC-SHA256(secret,
    ``{X-Webhook-Timestamp}.{raw body}``); the timestamp is integer unix seconds and must lie
    within the tolerance of now, in both directions.
``legacy``
    ``X-Signature: <hex>``, HMAC-SHA256(secret, raw body). No timestamp, so no protection
    against a replayed capture: enable it only for the older generation of the service.
``standard``
    Standard Webhooks: ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (space
    separated ``v1,<base64>`` entries) over ``{id}.{timestamp}.{raw body}``; secrets written
    ``whsec_<base64>`` are decoded (padding optional, as the reference library reads them),
    any other secret is used as its UTF-8 bytes. The id is signed as UTF-8 text, as the
    Standard Webhooks libraries do: a non-ASCII id arrives as the bytes the sender wrote
    (which HTTP servers hand over decoded as latin-1), and those bytes are what is checked.

A request is checked by the first enabled scheme whose signature header it carries, in the
order musicapi, standard, legacy; that scheme's answer is final (no falling back to a weaker
scheme). Any configured secret may match (rotation). Every comparison is constant-time, and
every malformed header is a :class:`VerificationError`, never a crash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from receiver.clock import Clock
from receiver.errors import VerificationError


class Scheme(StrEnum):
    MUSICAPI = "musicapi"
    STANDARD = "standard"
    LEGACY = "legacy"
    NONE = "none"  # verification switched off with --insecure-no-verify
    # How the other providers' callbacks are authenticated (receiver.providers): never
    # choices for Sonic's schemes.
    KIE = "kie"  # kie.ai's signature over {task_id}.{timestamp}: not the body
    HEADER_SECRET = "header_secret"  # noqa: S105 -- PiAPI: the secret, in x-webhook-secret
    TOKEN = "token"  # noqa: S105 -- a per-task token the receiver put in the callback URL
    PATH_SECRET = "path_secret"  # noqa: S105 -- a static secret path segment


# The order in which schemes are tried: the strongest first.
PRECEDENCE: tuple[Scheme, ...] = (Scheme.MUSICAPI, Scheme.STANDARD, Scheme.LEGACY)

MUSICAPI_SIGNATURE = "x-webhook-signature"
MUSICAPI_TIMESTAMP = "x-webhook-timestamp"
LEGACY_SIGNATURE = "x-signature"
STANDARD_ID = "webhook-id"
STANDARD_TIMESTAMP = "webhook-timestamp"
STANDARD_SIGNATURE = "webhook-signature"

KIE_SIGNATURE = MUSICAPI_SIGNATURE  # the same header names, another scheme (its own path)
KIE_TIMESTAMP = MUSICAPI_TIMESTAMP
HEADER_SECRET = "x-webhook-secret"  # noqa: S105 -- a header's name

# Headers whose value proves knowledge of a secret (or is one): never stored, never logged.
SIGNATURE_HEADERS = frozenset({MUSICAPI_SIGNATURE, LEGACY_SIGNATURE, STANDARD_SIGNATURE,
                               HEADER_SECRET})

_SIGNATURE_HEADER = {
    Scheme.MUSICAPI: MUSICAPI_SIGNATURE,
    Scheme.STANDARD: STANDARD_SIGNATURE,
    Scheme.LEGACY: LEGACY_SIGNATURE,
}
_MAX_HEADER = 4096  # longer signature headers are malformed, not worth hashing


@dataclass(frozen=True, kw_only=True)
class Verified:
    """What a successful verification established."""

    scheme: Scheme
    timestamp: int | None
    # The bytes the signature covered; a digest of them names a delivery that has no id header.
    signed_content: bytes


def secret_key(secret: str, scheme: Scheme) -> bytes:
    """The HMAC key for ``secret`` under ``scheme``."""
    if scheme is Scheme.STANDARD and secret.startswith("whsec_"):
        encoded = secret.removeprefix("whsec_")
        try:
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            return secret.encode()
    return secret.encode()


def _mac(key: bytes, content: bytes) -> bytes:
    return hmac.new(key, content, hashlib.sha256).digest()


def sign_musicapi(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """Headers signing ``body`` in the musicapi scheme."""
    mac = _mac(secret_key(secret, Scheme.MUSICAPI), f"{timestamp}.".encode() + body)
    return {"X-Webhook-Timestamp": str(timestamp), "X-Webhook-Signature": "sha256=" + mac.hex()}


def sign_legacy(secret: str, body: bytes) -> dict[str, str]:
    """Headers signing ``body`` in the legacy scheme."""
    return {"X-Signature": _mac(secret_key(secret, Scheme.LEGACY), body).hex()}


def sign_standard(secret: str, msg_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    """Headers signing ``body`` as a Standard Webhooks message."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    mac = _mac(secret_key(secret, Scheme.STANDARD), content)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


def sign(
    scheme: Scheme, secret: str, body: bytes, *, timestamp: int, msg_id: str
) -> dict[str, str]:
    """Headers signing ``body`` in ``scheme`` (``msg_id`` is used by the standard scheme)."""
    if scheme is Scheme.MUSICAPI:
        return sign_musicapi(secret, body, timestamp)
    if scheme is Scheme.LEGACY:
        return sign_legacy(secret, body)
    if scheme is Scheme.STANDARD:
        return sign_standard(secret, msg_id, body, timestamp)
    return {}


def parse_schemes(text: str) -> tuple[Scheme, ...]:
    """``"musicapi,legacy"`` → schemes; raises ``ValueError`` naming an unknown one."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("no signature scheme given")
    schemes: list[Scheme] = []
    for name in names:
        if name == Scheme.NONE:
            raise ValueError("'none' is not a scheme: use --insecure-no-verify")
        scheme = next((s for s in PRECEDENCE if s.value == name), None)
        if scheme is None:
            raise ValueError(f"unknown signature scheme {name!r}")
        if scheme not in schemes:
            schemes.append(scheme)
    return tuple(schemes)


class Verifier:
    """Checks a request's signature against every configured secret.

    ``headers`` may be any mapping; names are compared case-insensitively.
    """

    def __init__(
        self,
        secrets: Sequence[str],
        schemes: Iterable[Scheme],
        *,
        tolerance_s: int,
        clock: Clock,
    ) -> None:
        enabled = set(schemes)
        self._schemes = tuple(s for s in PRECEDENCE if s in enabled)
        self._keys = {s: tuple(secret_key(x, s) for x in secrets) for s in self._schemes}
        self._tolerance_s = tolerance_s
        self._clock = clock

    def verify(self, headers: Mapping[str, str], body: bytes) -> Verified:
        """What the signature of ``body`` establishes; any failure, whatever ``headers``
        hold, is a :class:`VerificationError`."""
        try:
            lowered = {k.lower(): v for k, v in headers.items() if isinstance(k, str)}
            for scheme in self._schemes:
                if _SIGNATURE_HEADER[scheme] in lowered:
                    try:
                        return self._verify(scheme, lowered, body)
                    except VerificationError as exc:
                        exc.scheme = scheme.value
                        raise
        except VerificationError:
            raise
        except Exception as exc:  # a header map no check foresaw: refuse, never crash
            raise VerificationError("malformed_signature", type(exc).__name__) from None
        raise VerificationError("missing_signature", "no signature header for an enabled scheme")

    def _verify(self, scheme: Scheme, headers: Mapping[str, str], body: bytes) -> Verified:
        signature = headers[_SIGNATURE_HEADER[scheme]]
        if not isinstance(signature, str) or len(signature) > _MAX_HEADER:
            raise VerificationError("malformed_signature")
        if scheme is Scheme.MUSICAPI:
            timestamp = self._timestamp(headers.get(MUSICAPI_TIMESTAMP))
            content = f"{timestamp}.".encode() + body
            candidates = [_hex_digest(signature.strip(), prefix="sha256=")]
        elif scheme is Scheme.LEGACY:
            timestamp = None
            content = body
            candidates = [_hex_digest(signature.strip(), prefix="sha256=", required=False)]
        else:
            msg_id = headers.get(STANDARD_ID, "")
            if not isinstance(msg_id, str) or not msg_id or len(msg_id) > _MAX_HEADER:
                raise VerificationError("malformed_signature", "webhook-id is missing")
            timestamp = self._timestamp(headers.get(STANDARD_TIMESTAMP))
            content = b"%s.%d." % (_signed_id(msg_id), timestamp) + body
            candidates = _standard_signatures(signature)
        for key in self._keys[scheme]:
            expected = _mac(key, content)
            # Check every candidate and key without an early exit on the first byte that differs.
            if any(hmac.compare_digest(expected, c) for c in candidates):
                return Verified(scheme=scheme, timestamp=timestamp, signed_content=content)
        raise VerificationError("signature_mismatch")

    def _timestamp(self, value: str | None) -> int:
        return check_timestamp(value, tolerance_s=self._tolerance_s, now=self._clock.now())


def check_timestamp(value: object, *, tolerance_s: int, now: float) -> int:
    """A signature's timestamp header: integer unix seconds within ``tolerance_s`` of ``now``,
    in both directions; any other value is a :class:`VerificationError`."""
    if value is None:
        raise VerificationError("missing_timestamp")
    if not isinstance(value, str):
        raise VerificationError("malformed_timestamp", "timestamp is not integer seconds")
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise VerificationError("malformed_timestamp", "timestamp is not integer seconds")
    timestamp = int(text)
    age = now - timestamp
    if age > tolerance_s:
        raise VerificationError("timestamp_expired")
    if -age > tolerance_s:
        raise VerificationError("timestamp_in_future")
    return timestamp


# ---- the other providers' ways (receiver.providers) -------------------------------------------


def sign_kie(key: str, task_id: str, timestamp: int) -> dict[str, str]:
    """kie.ai's headers for a callback of ``task_id``: base64 of HMAC-SHA256(key,
    ``{task_id}.{timestamp}``). The body is not covered."""
    mac = _mac(key.encode(), f"{task_id}.{timestamp}".encode())
    return {"X-Webhook-Timestamp": str(timestamp),
            "X-Webhook-Signature": base64.b64encode(mac).decode()}


def verify_kie(keys: Sequence[str], headers: Mapping[str, str], task_id: str, *,
               tolerance_s: int, now: float) -> int:
    """Check kie.ai's signature of ``task_id`` (the task the body names) against every key
    (a rotation); the timestamp it signed, or a :class:`VerificationError`."""
    signature = headers.get(KIE_SIGNATURE)
    if signature is None:
        raise _kie_error("missing_signature", "no X-Webhook-Signature")
    if not isinstance(signature, str) or len(signature) > _MAX_HEADER:
        raise _kie_error("malformed_signature")
    try:
        timestamp = check_timestamp(headers.get(KIE_TIMESTAMP), tolerance_s=tolerance_s, now=now)
    except VerificationError as exc:
        exc.scheme = Scheme.KIE.value
        raise
    try:
        given = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise _kie_error("malformed_signature", "not base64") from None
    content = f"{task_id}.{timestamp}".encode("utf-8", "surrogatepass")
    # every key is checked, no early exit on the first byte that differs
    if any([hmac.compare_digest(_mac(key.encode(), content), given) for key in keys]):
        return timestamp
    raise _kie_error("signature_mismatch")


def _kie_error(reason: str, message: str | None = None) -> VerificationError:
    error = VerificationError(reason, message)
    error.scheme = Scheme.KIE.value
    return error


def secret_matches(given: str | None, secrets: Sequence[str]) -> bool:
    """Whether ``given`` (a header's or a path's secret) is one of ``secrets``: each compared
    in constant time, all of them every time."""
    if not given or not secrets:
        return False
    raw = given.encode("utf-8", "surrogatepass")
    return any([hmac.compare_digest(raw, secret.encode()) for secret in secrets])


def header_text(value: str) -> str:
    """The text a header ``value`` stands for. A server decodes header bytes as latin-1, so
    text its sender wrote as UTF-8 arrives as those bytes: they are decoded again. A value
    that is not latin-1 bytes of UTF-8 (a mapping built in Python, a latin-1 sender) is taken
    as it is."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def header_bytes(value: str) -> bytes:
    """``value`` as bytes to send in a header: the bytes it was received as (latin-1), or
    its UTF-8 when it was never a received header."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def _signed_id(msg_id: str) -> bytes:
    """The bytes a Standard Webhooks sender signed for the ``webhook-id`` it sent: the
    libraries sign the id's UTF-8 encoding, so the id's text (:func:`header_text`) in UTF-8.
    One that is not text at all (a lone surrogate) cannot have been signed."""
    try:
        return header_text(msg_id).encode("utf-8")
    except UnicodeEncodeError:
        raise VerificationError("malformed_signature", "webhook-id is not text") from None


def _hex_digest(value: str, *, prefix: str, required: bool = True) -> bytes:
    if value.lower().startswith(prefix):
        value = value[len(prefix) :]
    elif required:
        raise VerificationError("malformed_signature", f"signature must start with {prefix}")
    if len(value) != 64 or not value.isascii():
        raise VerificationError("malformed_signature", "signature is not 64 hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise VerificationError("malformed_signature", "signature is not hex") from None


def _standard_signatures(header: str) -> list[bytes]:
    found: list[bytes] = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue  # other versions (v1a: asymmetric) are not ours to check
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not found:
        raise VerificationError("malformed_signature", "no v1 signature entry")
    return found
