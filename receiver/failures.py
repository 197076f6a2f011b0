"""Why a task failed, as one of a few categories: kept with the task when it fails, counted in
``/metrics``, shown in the console and used by the tasks-failing alert.

:func:`classify` reads the upstream's ``code`` and message (a clip's ``error_message``, else
the callback's ``message``): words first, since they say the most (a moderation or copyright
refusal, credits, a timeout, one of the seed's request errors), then the code alone (403 is
credits, 408/504 a timeout, another 4xx a refused request, 5xx the upstream's own failure).
The message comes from a callback: it is only matched, never evaluated, and read up to a
bounded length.

A provider that documents what its failure codes mean (:mod:`receiver.providers`) has them
read by :func:`classify_documented`: its table wins over the words (sunoapi.org's 531 says
"your credits have been refunded": the provider failed, the credits are fine), but for words
that name a refusal of the content itself (moderation, copyright), which say the most.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum


class FailureCategory(StrEnum):
    MODERATION = "moderation"
    COPYRIGHT = "copyright"
    CREDITS = "credits"
    TIMEOUT = "timeout"
    INVALID_REQUEST = "invalid_request"
    UPSTREAM = "upstream"
    UNKNOWN = "unknown"


# What each category means and what to do about it: the console and the alerts say it.
ADVICE: dict[FailureCategory, str] = {
    FailureCategory.MODERATION: "the provider's content filter refused the prompt, lyrics or "
    "tags: review what is sent (names of real artists, explicit words)",
    FailureCategory.COPYRIGHT: "the provider matched copyrighted lyrics or audio: use original "
    "lyrics, or another upload",
    FailureCategory.CREDITS: "the account ran out of credits: top it up (GET the credits "
    "endpoint to check the balance)",
    FailureCategory.TIMEOUT: "the provider timed out: usually passing; `sonic-receiver replay "
    "reconcile` picks up tasks that finish late",
    FailureCategory.INVALID_REQUEST: "the provider refused the request as invalid: compare it "
    "with the error table of the API (model, lengths, required clip ids)",
    FailureCategory.UPSTREAM: "the provider failed on its side: check its status page; "
    "retrying later usually works",
    FailureCategory.UNKNOWN: "the provider gave no reason that could be read: see the task's "
    "error in the console",
}

_MAX_TEXT = 2000
# Order matters: a message naming a "copyright violation" is copyright, not moderation.
_WORDS: tuple[tuple[FailureCategory, re.Pattern[str]], ...] = tuple(
    (category, re.compile(pattern, re.IGNORECASE))
    for category, pattern in (
        (FailureCategory.COPYRIGHT, r"copyright|copyrighted|artist name|"
                                    r"matches (an )?existing|protected (work|content|lyrics)"),
        (FailureCategory.MODERATION, r"moderat|violat|policy|policies|inappropriate|nsfw|"
                                     r"sensitive|offensive|banned|prohibited|content filter|"
                                     r"flagged|not allowed|unsafe"),
        (FailureCategory.CREDITS, r"credits?\b|insufficient|balance|quota|payment|"
                                  r"subscription"),
        (FailureCategory.TIMEOUT, r"time ?out|timed out|took too long|deadline"),
        (FailureCategory.INVALID_REQUEST, r"is invalid|is required|length exceeded|"
                                          r"should be|invalid|missing|malformed|bad request"),
        (FailureCategory.UPSTREAM, r"internal|server error|unavailable|overloaded|"
                                   r"generation failed|try again"),
    )
)


def classify(code: int | None, message: str | None) -> FailureCategory:
    """The category of a failure the upstream reported with ``code`` and ``message``."""
    text = (message or "")[:_MAX_TEXT]
    for category, pattern in _WORDS:
        if pattern.search(text):
            return category
    if code is None:
        return FailureCategory.UNKNOWN
    if code == 403 or code == 402:
        return FailureCategory.CREDITS
    if code in (408, 504):
        return FailureCategory.TIMEOUT
    if 400 <= code < 500:
        return FailureCategory.INVALID_REQUEST
    if 500 <= code < 600:
        return FailureCategory.UPSTREAM
    return FailureCategory.UNKNOWN


_REFUSALS = frozenset({FailureCategory.MODERATION, FailureCategory.COPYRIGHT})


def classify_documented(code: int | None, message: str | None,
                        codes: Mapping[int, FailureCategory]) -> FailureCategory:
    """The category of a failure of a provider whose ``codes`` say what each means: words
    naming a refusal of the content first, then the documented code, then :func:`classify`."""
    words = classify(None, message)
    if words in _REFUSALS:
        return words
    if code is not None and code in codes:
        return codes[code]
    return classify(code, message)
