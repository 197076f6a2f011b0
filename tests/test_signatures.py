"""Signature schemes: published vectors, and every way a signature can be wrong."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

import pytest
import standardwebhooks
from hypothesis import given
from hypothesis import strategies as st

from receiver.clock import FakeClock
from receiver.errors import VerificationError
from receiver.signatures import (
    Scheme,
    Verifier,
    parse_schemes,
    sign,
    sign_legacy,
    sign_musicapi,
    sign_standard,
)

NOW = 1_700_000_000
BODY = b'{"task_id": "t-1", "data": []}'

# https://github.com/standard-webhooks/standard-webhooks (the spec's published example)
SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_TIMESTAMP = 1614265330
SW_BODY = b'{"test": 2432232314}'
SW_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

# GitHub's documented example for X-Hub-Signature-256 (plain HMAC-SHA256 of the body).
GH_SECRET = "It's a Secret to Everybody"
GH_BODY = b"Hello, World!"
GH_HEX = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def verifier(
    *secrets: str, schemes: tuple[Scheme, ...] = (Scheme.MUSICAPI,), now: float = NOW
) -> Verifier:
    return Verifier(secrets or ("s1",), schemes, tolerance_s=300, clock=FakeClock(now))


def test_standard_webhooks_published_vector_signs_and_verifies() -> None:
    headers = sign_standard(SW_SECRET, SW_ID, SW_BODY, SW_TIMESTAMP)
    assert headers["webhook-signature"] == SW_SIGNATURE
    v = verifier(SW_SECRET, schemes=(Scheme.STANDARD,), now=SW_TIMESTAMP + 10)
    verified = v.verify(
        {"webhook-id": SW_ID, "webhook-timestamp": str(SW_TIMESTAMP),
         "webhook-signature": SW_SIGNATURE},
        SW_BODY,
    )
    assert verified.scheme is Scheme.STANDARD


def test_standard_accepts_any_of_several_space_separated_signatures() -> None:
    v = verifier(SW_SECRET, schemes=(Scheme.STANDARD,), now=SW_TIMESTAMP)
    header = f"v1a,bm90IGNoZWNrZWQ= v1,AAAA{SW_SIGNATURE[7:]} {SW_SIGNATURE}"
    headers = {"webhook-id": SW_ID, "webhook-timestamp": str(SW_TIMESTAMP),
               "webhook-signature": header}
    assert v.verify(headers, SW_BODY).scheme is Scheme.STANDARD


def test_github_documented_hmac_vector_is_the_legacy_scheme() -> None:
    assert sign_legacy(GH_SECRET, GH_BODY) == {"X-Signature": GH_HEX}
    v = verifier(GH_SECRET, schemes=(Scheme.LEGACY,))
    assert v.verify({"X-Signature": GH_HEX}, GH_BODY).scheme is Scheme.LEGACY
    assert v.verify({"X-Signature": "sha256=" + GH_HEX.upper()}, GH_BODY).scheme is Scheme.LEGACY


def test_musicapi_round_trip_signs_timestamp_dot_body() -> None:
    headers = sign_musicapi("s1", BODY, NOW)
    verified = verifier("s1").verify(headers, BODY)
    assert verified.timestamp == NOW
    assert verified.signed_content == f"{NOW}.".encode() + BODY


def reason(v: Verifier, headers: dict[str, str], body: bytes = BODY) -> str:
    with pytest.raises(VerificationError) as caught:
        v.verify(headers, body)
    return caught.value.reason


def test_tampered_body_is_a_mismatch() -> None:
    headers = sign_musicapi("s1", BODY, NOW)
    assert reason(verifier("s1"), headers, BODY + b" ") == "signature_mismatch"


def test_wrong_secret_is_a_mismatch() -> None:
    assert reason(verifier("s1"), sign_musicapi("s2", BODY, NOW)) == "signature_mismatch"


def test_timestamp_inside_the_tolerance_both_ways_is_accepted() -> None:
    for ts in (NOW - 300, NOW + 300):
        assert verifier("s1").verify(sign_musicapi("s1", BODY, ts), BODY).timestamp == ts


def test_timestamp_301_seconds_old_is_expired() -> None:
    assert reason(verifier("s1"), sign_musicapi("s1", BODY, NOW - 301)) == "timestamp_expired"


def test_timestamp_301_seconds_ahead_is_in_the_future() -> None:
    assert reason(verifier("s1"), sign_musicapi("s1", BODY, NOW + 301)) == "timestamp_in_future"


def test_changing_the_timestamp_header_breaks_the_signature() -> None:
    headers = sign_musicapi("s1", BODY, NOW)
    headers["X-Webhook-Timestamp"] = str(NOW + 1)
    assert reason(verifier("s1"), headers) == "signature_mismatch"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, "missing_signature"),
        ({"X-Webhook-Signature": "sha256=" + "0" * 64}, "missing_timestamp"),
        ({"X-Webhook-Signature": "sha256=" + "0" * 64, "X-Webhook-Timestamp": "12.5"},
         "malformed_timestamp"),
        ({"X-Webhook-Signature": "sha256=" + "0" * 64, "X-Webhook-Timestamp": "-5"},
         "malformed_timestamp"),
        ({"X-Webhook-Signature": "sha256=" + "0" * 64, "X-Webhook-Timestamp": "١٢٣"},
         "malformed_timestamp"),
        ({"X-Webhook-Signature": "0" * 64, "X-Webhook-Timestamp": str(NOW)},
         "malformed_signature"),
        ({"X-Webhook-Signature": "sha256=xyz", "X-Webhook-Timestamp": str(NOW)},
         "malformed_signature"),
        ({"X-Webhook-Signature": "sha256=" + "g" * 64, "X-Webhook-Timestamp": str(NOW)},
         "malformed_signature"),
        ({"X-Webhook-Signature": "sha256=" + "a" * 5000, "X-Webhook-Timestamp": str(NOW)},
         "malformed_signature"),
    ],
)
def test_malformed_musicapi_headers_are_named_failures(
    headers: dict[str, str], expected: str
) -> None:
    assert reason(verifier("s1"), headers) == expected


def test_malformed_standard_headers_are_named_failures() -> None:
    v = verifier(SW_SECRET, schemes=(Scheme.STANDARD,), now=SW_TIMESTAMP)
    base = {"webhook-id": SW_ID, "webhook-timestamp": str(SW_TIMESTAMP)}
    assert reason(v, {**base, "webhook-signature": "v1,!!!"}) == "malformed_signature"
    assert reason(v, {**base, "webhook-signature": "v2,abc"}) == "malformed_signature"
    no_id = {"webhook-timestamp": str(SW_TIMESTAMP), "webhook-signature": SW_SIGNATURE}
    assert reason(v, no_id) == "malformed_signature"


def test_rotated_secrets_any_configured_secret_matches() -> None:
    v = verifier("new-secret", "old-secret")
    assert v.verify(sign_musicapi("old-secret", BODY, NOW), BODY)
    assert v.verify(sign_musicapi("new-secret", BODY, NOW), BODY)
    assert reason(v, sign_musicapi("retired-secret", BODY, NOW)) == "signature_mismatch"


def test_a_disabled_scheme_is_not_accepted() -> None:
    v = verifier("s1", schemes=(Scheme.MUSICAPI,))
    assert reason(v, sign_legacy("s1", BODY)) == "missing_signature"


def test_a_failing_strong_scheme_does_not_fall_back_to_a_weaker_one() -> None:
    v = verifier("s1", schemes=(Scheme.MUSICAPI, Scheme.LEGACY))
    headers = {**sign_musicapi("s1", BODY, NOW - 10_000), **sign_legacy("s1", BODY)}
    assert reason(v, headers) == "timestamp_expired"


def test_header_names_are_case_insensitive() -> None:
    headers = {k.lower(): v for k, v in sign_musicapi("s1", BODY, NOW).items()}
    assert verifier("s1").verify(headers, BODY).scheme is Scheme.MUSICAPI


def test_parse_schemes_rejects_unknown_and_none() -> None:
    assert parse_schemes(" musicapi , legacy,musicapi") == (Scheme.MUSICAPI, Scheme.LEGACY)
    for text in ("nope", "", "none"):
        with pytest.raises(ValueError, match=r"scheme"):
            parse_schemes(text)


@given(
    headers=st.dictionaries(
        st.sampled_from(["x-webhook-signature", "x-webhook-timestamp", "x-signature",
                         "webhook-id", "webhook-timestamp", "webhook-signature", "other"]),
        st.text(max_size=80),
    ),
    body=st.binary(max_size=200),
)
def test_random_headers_never_crash_the_verifier(headers: dict[str, str], body: bytes) -> None:
    v = verifier("s1", schemes=(Scheme.MUSICAPI, Scheme.STANDARD, Scheme.LEGACY))
    with contextlib.suppress(VerificationError):  # any other exception fails the test
        v.verify(headers, body)


# Any code point, lone surrogates included (hypothesis leaves them out unless asked).
any_text = st.text(st.characters(exclude_categories=()), max_size=80)
HEADER_NAMES = ["x-webhook-signature", "x-webhook-timestamp", "x-signature", "webhook-id",
                "webhook-timestamp", "webhook-signature"]


@given(
    headers=st.dictionaries(
        st.sampled_from(HEADER_NAMES) | any_text,
        any_text | st.sampled_from([str(NOW), "sha256=" + "0" * 64, "v1,AAAA", "0" * 64])
        | st.none() | st.integers() | st.binary(max_size=8),
    ),
    body=st.binary(max_size=64),
)
def test_any_header_map_is_verified_or_refused_never_a_crash(
    headers: dict[str, Any], body: bytes
) -> None:
    v = verifier("s1", schemes=(Scheme.MUSICAPI, Scheme.STANDARD, Scheme.LEGACY))
    with contextlib.suppress(VerificationError):  # any other exception fails the test
        v.verify(headers, body)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-webhook-signature": "sha256=\ud800" + "0" * 63, "x-webhook-timestamp": str(NOW)},
        {"x-webhook-signature": "sha256=" + "0" * 64, "x-webhook-timestamp": "1\udc00"},
        {"x-signature": "\ud800" * 64},
        {"webhook-id": "msg_\ud800", "webhook-timestamp": str(NOW), "webhook-signature": "v1,AA=="},
        {"webhook-id": "m", "webhook-timestamp": str(NOW), "webhook-signature": "v1,\ud800"},
        {"webhook-id": None, "webhook-timestamp": str(NOW), "webhook-signature": "v1,AA=="},
        {"webhook-id": "m", "webhook-timestamp": 5, "webhook-signature": "v1,AA=="},
        {"x-signature": b"00"},
    ],
)
def test_header_values_that_are_not_text_are_refused(headers: dict[str, Any]) -> None:
    v = verifier("s1", schemes=(Scheme.MUSICAPI, Scheme.STANDARD, Scheme.LEGACY))
    assert reason(v, headers).startswith("malformed_")


# ---- what the mutation run found untested -----------------------------------------------------


def test_sign_dispatches_each_scheme_to_its_own_signer() -> None:
    assert sign(Scheme.MUSICAPI, "s1", BODY, timestamp=NOW, msg_id="m") == sign_musicapi(
        "s1", BODY, NOW)
    assert sign(Scheme.LEGACY, "s1", BODY, timestamp=NOW, msg_id="m") == sign_legacy("s1", BODY)
    assert sign(Scheme.STANDARD, "s1", BODY, timestamp=NOW, msg_id="m") == sign_standard(
        "s1", "m", BODY, NOW)
    assert sign(Scheme.NONE, "s1", BODY, timestamp=NOW, msg_id="m") == {}
    every = verifier("s1", schemes=(Scheme.MUSICAPI, Scheme.STANDARD, Scheme.LEGACY))
    for scheme in (Scheme.MUSICAPI, Scheme.STANDARD, Scheme.LEGACY):
        headers = sign(scheme, "s1", BODY, timestamp=NOW, msg_id="m")
        assert every.verify(headers, BODY).scheme is scheme


@pytest.mark.parametrize("digits", [62, 63, 65, 66, 128])
def test_a_hex_signature_of_the_wrong_length_is_malformed_not_a_mismatch(digits: int) -> None:
    hexes = ("ab" * 64)[:digits]
    musicapi = {"X-Webhook-Signature": "sha256=" + hexes, "X-Webhook-Timestamp": str(NOW)}
    assert reason(verifier("s1"), musicapi) == "malformed_signature"
    legacy = verifier("s1", schemes=(Scheme.LEGACY,))
    assert reason(legacy, {"X-Signature": hexes}) == "malformed_signature"


def test_a_correct_mac_under_another_version_than_v1_is_not_accepted() -> None:
    v = verifier(SW_SECRET, schemes=(Scheme.STANDARD,), now=SW_TIMESTAMP)
    base = {"webhook-id": SW_ID, "webhook-timestamp": str(SW_TIMESTAMP)}
    mac = SW_SIGNATURE.removeprefix("v1,")
    for label in ("v1a", "v2", "V1", "", "v1 "):
        assert reason(v, {**base, "webhook-signature": f"{label},{mac}"}) in (
            "malformed_signature", "signature_mismatch")


def test_a_malformed_v1_entry_is_skipped_and_a_later_good_one_still_counts() -> None:
    v = verifier(SW_SECRET, schemes=(Scheme.STANDARD,), now=SW_TIMESTAMP)
    base = {"webhook-id": SW_ID, "webhook-timestamp": str(SW_TIMESTAMP)}
    header = f"v1,!!! v1,abc v1 {SW_SIGNATURE}"
    assert v.verify({**base, "webhook-signature": header}, SW_BODY).scheme is Scheme.STANDARD
    assert reason(v, {**base, "webhook-signature": "v1,!!! v1,abc"}) == "malformed_signature"


def test_a_whsec_secret_is_decoded_only_under_standard() -> None:
    key = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    mac = hmac.new(key, f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    headers = {"X-Webhook-Signature": "sha256=" + mac, "X-Webhook-Timestamp": str(NOW)}
    assert verifier(key.decode()).verify(headers, BODY).scheme is Scheme.MUSICAPI
    assert sign_musicapi(key.decode(), BODY, NOW) == headers
    legacy = hmac.new(key, BODY, hashlib.sha256).hexdigest()
    assert sign_legacy(key.decode(), BODY) == {"X-Signature": legacy}


def test_a_whsec_secret_that_is_not_base64_is_used_as_its_bytes() -> None:
    secret = "whsec_not*base64!"
    mac = hmac.new(secret.encode(), f"m.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    headers = {"webhook-id": "m", "webhook-timestamp": str(NOW),
               "webhook-signature": "v1," + base64.b64encode(mac).decode()}
    v = verifier(secret, schemes=(Scheme.STANDARD,))
    assert v.verify(headers, BODY).scheme is Scheme.STANDARD


# ---- the Standard Webhooks reference library, both ways ---------------------------------------


def library_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    signature: str = standardwebhooks.Webhook(secret).sign(msg_id, when, body.decode())
    return signature


@pytest.mark.parametrize(
    "secret",
    [SW_SECRET, "whsec_" + base64.b64encode(b"sixteen byte key").decode().rstrip("="),
     "whsec_" + base64.b64encode(b"0123456789").decode().rstrip("="),
     "whsec_" + base64.b64encode(b"eleven byte").decode().rstrip("=")],  # one "=" missing
)
@pytest.mark.parametrize("msg_id", [SW_ID, "msg_\u00e9t\u00e9", "msg_\N{MUSICAL NOTE}_\u4e2d"])
def test_what_the_reference_library_signs_verifies_here_and_back(secret: str, msg_id: str) -> None:
    body = '{"task_id": "t-\u00e9"}'.encode()
    signature = library_signature(secret, msg_id, NOW, body)
    v = verifier(secret, schemes=(Scheme.STANDARD,))
    # as a Python mapping holds it, and as a server hands it over (its UTF-8 bytes as latin-1)
    for as_received in (msg_id, msg_id.encode().decode("latin-1")):
        headers = {"webhook-id": as_received, "webhook-timestamp": str(NOW),
                   "webhook-signature": signature}
        assert v.verify(headers, body).scheme is Scheme.STANDARD
    ours = sign_standard(secret, msg_id, body, NOW)
    assert ours["webhook-signature"] == signature
    when = datetime.now(tz=UTC)
    fresh = sign_standard(secret, msg_id, body, int(when.timestamp()))
    standardwebhooks.Webhook(secret).verify(body, fresh, json_parse=False)  # raises if refused


def test_a_latin1_id_is_checked_as_the_text_the_library_signed() -> None:
    # A sender that writes the header as latin-1 bytes: the server reads back the same text.
    signature = library_signature(SW_SECRET, "caf\u00e9", NOW, BODY)
    v = verifier(SW_SECRET, schemes=(Scheme.STANDARD,))
    headers = {"webhook-id": "caf\u00e9", "webhook-timestamp": str(NOW),
               "webhook-signature": signature}
    assert v.verify(headers, BODY).scheme is Scheme.STANDARD


def test_standard_header_names_are_the_specs_lowercase_ones() -> None:
    assert set(sign_standard("s1", "m", BODY, NOW)) == {
        "webhook-id", "webhook-timestamp", "webhook-signature"}
    assert set(sign_musicapi("s1", BODY, NOW)) == {"X-Webhook-Timestamp", "X-Webhook-Signature"}


def test_parse_schemes_says_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"^no signature scheme given$"):
        parse_schemes(" , ")
    with pytest.raises(ValueError, match=r"^'none' is not a scheme: use --insecure-no-verify$"):
        parse_schemes("musicapi,none")
    assert parse_schemes("standard") == (Scheme.STANDARD,)


def test_a_header_map_that_breaks_when_read_is_refused_not_raised() -> None:
    from collections.abc import Iterator, Mapping

    class Broken(Mapping[str, str]):
        def __getitem__(self, key: str) -> str:
            raise KeyError(key)

        def __iter__(self) -> Iterator[str]:
            raise RuntimeError("a broken header map")

        def __len__(self) -> int:
            return 1

    with pytest.raises(VerificationError) as caught:
        verifier("s1").verify(Broken(), BODY)
    assert (caught.value.reason, caught.value.message) == ("malformed_signature", "RuntimeError")


def test_legacy_verification_has_no_timestamp() -> None:
    v = verifier("s1", schemes=(Scheme.LEGACY,))
    assert v.verify(sign_legacy("s1", BODY), BODY).timestamp is None


def test_header_length_bounds_are_inclusive_at_4096() -> None:
    v = verifier("s1", schemes=(Scheme.STANDARD,))
    good = sign_standard("s1", "m", BODY, NOW)["webhook-signature"]
    base = {"webhook-id": "m", "webhook-timestamp": str(NOW)}
    padded = ("v1a,x " * 1000)[: 4096 - len(good) - 1] + " " + good
    assert len(padded) == 4096
    assert v.verify({**base, "webhook-signature": padded}, BODY).scheme is Scheme.STANDARD
    # one character more and the header is not read at all, even with a good entry in it
    assert reason(v, {**base, "webhook-signature": "v" + padded}) == "malformed_signature"
    assert reason(v, {**base, "webhook-signature": "x" * 10_000}) == "malformed_signature"
    long_id = "i" * 4096
    signed = sign_standard("s1", long_id, BODY, NOW)
    assert v.verify(signed, BODY).scheme is Scheme.STANDARD
    too_long = sign_standard("s1", long_id + "i", BODY, NOW)
    assert reason(v, too_long) == "malformed_signature"


def test_timestamps_are_read_up_to_twelve_digits() -> None:
    v = verifier("s1")
    twelve = f"{NOW:012d}"
    headers = {**sign_musicapi("s1", BODY, NOW), "X-Webhook-Timestamp": twelve}
    assert v.verify(headers, BODY).timestamp == NOW
    headers["X-Webhook-Timestamp"] = f"{NOW:013d}"
    assert reason(v, headers) == "malformed_timestamp"


def test_a_whsec_secret_with_stray_characters_is_used_as_its_bytes() -> None:
    # Lenient base64 would skip the '*' and decode the rest: a secret this malformed is
    # taken literally instead, as any secret that is not whsec_<base64> is.
    secret = "whsec_abcd*efgh"
    mac = hmac.new(secret.encode(), f"m.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    headers = {"webhook-id": "m", "webhook-timestamp": str(NOW),
               "webhook-signature": "v1," + base64.b64encode(mac).decode()}
    assert verifier(secret, schemes=(Scheme.STANDARD,)).verify(headers, BODY)


def test_header_text_and_bytes_round_trip_what_a_server_received() -> None:
    from receiver.signatures import header_bytes, header_text

    utf8_on_the_wire = "caf\u00e9".encode().decode("latin-1")  # how a server hands it over
    assert header_text(utf8_on_the_wire) == "caf\u00e9"
    assert header_bytes(utf8_on_the_wire) == "caf\u00e9".encode()
    assert header_text("caf\u00e9") == "caf\u00e9"  # latin-1 bytes that are not UTF-8
    assert header_bytes("caf\u00e9") == b"caf\xe9"
    # never received (built in Python): sent as UTF-8, even a lone surrogate, never a crash
    assert header_bytes("\N{MUSICAL NOTE}") == "\N{MUSICAL NOTE}".encode()
    assert header_bytes("a\ud800") == b"a\xed\xa0\x80"
