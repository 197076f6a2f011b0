"""Sending a message to apprise URLs, one target at a time: what the ``notify`` handler and
the receiver's own alerts (:mod:`receiver.alerts`) both use.

A :class:`Target` is one URL; only its ``label`` (index and scheme) and its ``fingerprint``
(a truncated digest, to notice a list that changed) may be logged or stored, since apprise
URLs carry tokens and passwords. :func:`services` checks every URL before anything is sent;
:func:`send` delivers one message to one target and raises :class:`NotSent` saying why not.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import apprise

from receiver.errors import ReceiverError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{0,31})://")


class NotSent(ReceiverError):
    """A target did not take the message (or could not be reached)."""


class UnusableTarget(ReceiverError):
    """A URL apprise cannot send to (unknown scheme, missing parts, plugin not installed)."""


@dataclass(frozen=True, kw_only=True)
class Target:
    """One target URL; ``label`` (index and scheme) is all that may be logged of it."""

    index: int
    url: str

    @property
    def label(self) -> str:
        return f"#{self.index} {scheme_of(self.url)}"

    @property
    def fingerprint(self) -> str:
        # Recorded to notice a target list that changed between attempts; a truncated digest,
        # so the stored record does not carry the URL's secrets.
        return hashlib.sha256(self.url.encode()).hexdigest()[:16]


def targets_of(urls: Sequence[str]) -> list[Target]:
    return [Target(index=i, url=url.strip()) for i, url in enumerate(urls)]


def scheme_of(url: str) -> str:
    """The URL's scheme (``json``, ``mailtos``...), or ``?``: the only part safe to log."""
    match = _SCHEME.match(url.strip())
    return match.group(1).lower() if match else "?"


def services(targets: Sequence[Target]) -> dict[int, apprise.Apprise]:
    """One apprise instance per target, so each succeeds or fails on its own; raises
    :class:`UnusableTarget` for the first URL apprise cannot use, before anything is sent.
    The first call loads apprise's plugins (a few tenths of a second): call it off the event
    loop."""
    quiet_imghdr()
    asset = apprise.AppriseAsset(app_id="sonic-receiver", app_desc="Sonic webhook receiver")
    found: dict[int, apprise.Apprise] = {}
    for target in targets:
        plugin = apprise.Apprise.instantiate(target.url, asset=asset)
        if plugin is None:
            raise UnusableTarget(
                f"target {target.label} is not a usable apprise URL (unknown scheme, missing "
                "parts, or a plugin that is not installed)")
        service = apprise.Apprise(asset=asset)
        service.add(plugin)
        found[target.index] = service
    return found


async def send(
    service: apprise.Apprise, *, title: str, body: str, notify_type: apprise.NotifyType,
    body_format: apprise.NotifyFormat = apprise.NotifyFormat.TEXT,
) -> None:
    """Deliver one message through ``service``; :class:`NotSent` with the reason if it was
    not taken (never the URL)."""
    try:
        # async_notify runs blocking plugins in apprise's thread pool, off the event loop
        result = await service.async_notify(body=body, title=title, notify_type=notify_type,
                                            body_format=body_format)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise NotSent(f"apprise raised {type(exc).__name__}") from exc
    if not result:
        status = getattr(result, "status", None)
        raise NotSent(f"not delivered ({status.name.lower()})" if status is not None
                      else "refused")


def quiet_imghdr() -> None:
    """Import ``imghdr`` once with its DeprecationWarning silenced.

    apprise's e-mail plugin imports it (through PGPy) on Python < 3.13 when plugins first
    load. That is apprise's business, not a failure of ours, but the warning would be raised
    in the loading thread, where a filter cannot be scoped (``catch_warnings`` is
    process-wide); once the module is imported here, that import finds it and stays quiet.
    """
    if sys.version_info >= (3, 13) or "imghdr" in sys.modules:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*'imghdr' is deprecated",
                                category=DeprecationWarning)
        importlib.import_module("imghdr")
