"""Signature schemes: published vectors, and every way a signature can be wrong."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver.clock import FakeClock
from receiver.errors import VerificationError
from receiver.signatures import (
    Scheme,
    Verifier,
    parse_schemes,
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
