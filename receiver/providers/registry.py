"""The adapter of each provider name a ``[providers.<name>]`` table may enable."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from receiver.clock import Clock, SystemClock
from receiver.config import ProviderTable
from receiver.providers import Adapter
from receiver.providers.aimlapi import AimlapiAdapter
from receiver.providers.apibox import ApiboxAdapter
from receiver.providers.kie import KieAdapter
from receiver.providers.piapi import PiapiAdapter
from receiver.providers.sunoapi import SunoapiAdapter

if TYPE_CHECKING:
    from receiver.settings import Settings

ADAPTERS: dict[str, type[Adapter]] = {
    adapter.name: adapter
    for adapter in (SunoapiAdapter, KieAdapter, ApiboxAdapter, PiapiAdapter, AimlapiAdapter)
}


def adapters(settings: Settings, *, clock: Clock) -> dict[str, Adapter]:
    """The adapters of the providers ``settings`` enable (Sonic's endpoint is apart)."""
    return {name: ADAPTERS[name](table, tolerance_s=settings.signature_tolerance_s,
                                 clock=clock)
            for name, table in settings.providers.tables().items()}


def documented_link_lifetime(provider: str) -> float | None:
    """How long ``provider``'s media links last (seconds), as its documentation says; None
    for Sonic (undocumented), a provider that does not say, or a name that is no provider's."""
    kind = ADAPTERS.get(provider)
    return None if kind is None else kind.link_lifetime_s


@cache
def reader_for(name: str) -> Adapter | None:
    """An adapter of ``name`` that reads bodies only (a stored delivery's, for replay: reading
    needs no table), or None for a name that is not a provider's."""
    kind = ADAPTERS.get(name)
    return None if kind is None else kind(ProviderTable(), tolerance_s=0, clock=SystemClock())
