"""Calls to a task's provider, whichever it is: :class:`ProviderCalls` is what reconcile,
confirmation and handlers (``ctx.sonic``) are given when other providers than Sonic are
enabled; each call goes to the client of the task's provider (read from the store), Sonic's
to :class:`receiver.sonic.client.SonicClient` as before.

Creating a task through a provider (:meth:`ProviderCalls.create`: ``POST /tasks``, follow-up
tasks) puts this receiver's callback URL in it: ``/webhooks/<provider>``, and for a provider
that authenticates no body, a fresh unguessable token as the URL's last segment (its SHA-256
kept before the call, bound to the task once the provider names it, dropped if the provider
refuses the request; a create whose outcome is unknown keeps it, unbound: the task may call
back). Only the provider and this receiver ever see a token.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING

from receiver.clock import Clock
from receiver.errors import SettingsError
from receiver.providers import SONIC, Adapter, ProviderClient
from receiver.sonic.client import SonicClient
from receiver.sonic.contract import CreateRequest
from receiver.sonic.errors import SonicError, SonicRequestError, SonicValidationError
from receiver.sonic.responses import Bpm, Created, Music, Vox
from receiver.storage.ingest import Ingest

if TYPE_CHECKING:
    from receiver.settings import Settings


def token_hash(token: str) -> str:
    """What the store keeps of a callback token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class NoClient(SonicError):
    """No client for this provider: give its table an api_key (Sonic: SONIC_API_BASE_URL and
    SONIC_API_KEY)."""


class ProviderCalls:
    """Every provider's client, each call routed by its task's provider."""

    def __init__(self, *, settings: Settings, adapters: Mapping[str, Adapter],
                 clients: Mapping[str, ProviderClient], sonic: SonicClient | None,
                 ingest: Ingest, clock: Clock) -> None:
        self.settings = settings
        self.adapters = adapters
        self.clients = clients
        self.sonic = sonic
        self.ingest = ingest
        self.clock = clock

    def bound(self, task_id: str) -> TaskCalls:
        """The calls a handler of ``task_id`` makes (``ctx.sonic``)."""
        return TaskCalls(self, task_id)

    async def provider_of(self, task_id: str) -> str:
        """The task's provider (Sonic's for a task the store does not know)."""
        return await self.ingest.provider_of(task_id) or SONIC

    async def get_music(self, task_id: str) -> Music:
        """Poll ``task_id`` at its provider."""
        provider = await self.provider_of(task_id)
        if provider == SONIC:
            return await self.sonic_client().get_music(task_id)
        return await self._client(provider).get_music(task_id)

    async def create(self, provider: str, request: CreateRequest, *,
                     source_is_upload: bool = False) -> Created:
        """Create ``request`` through ``provider``, calling back this receiver (see the
        module docstring). Sonic's request keeps the webhook URL and secret it was given."""
        if provider == SONIC:
            return await self.sonic_client().create(request, source_is_upload=source_is_upload)
        adapter, client = self.adapters[provider], self._client(provider)
        token = secrets.token_urlsafe(32) if adapter.tokens else None
        url = self.settings.callback_url(provider, token)
        if url is None:
            raise SettingsError("RECEIVER_PUBLIC_URL is not set: a created task needs a "
                                "callback URL")
        if token is not None:
            await self.ingest.add_token(token_hash(token), provider=provider,
                                        now=self.clock.now())
        secret = next(iter(getattr(adapter.table, "webhook_secret", None) or ()), None)
        try:
            created = await client.create(request, callback_url=url, secret=secret)
        except SonicRequestError:
            if token is not None:  # refused: nothing will call it back
                await self.ingest.drop_token(token_hash(token))
            raise
        if token is not None:
            await self.ingest.bind_token(token_hash(token), created.task_id)
        return created

    def _client(self, provider: str) -> ProviderClient:
        client = self.clients.get(provider)
        if client is None:
            raise NoClient(f"no client for {provider}: set [providers.{provider}] api_key")
        return client

    def sonic_client(self) -> SonicClient:
        if self.sonic is None:
            raise NoClient("no Sonic client: set SONIC_API_BASE_URL and SONIC_API_KEY")
        return self.sonic


class TaskCalls:
    """The calls a handler of one task makes, through that task's provider: a follow-up is
    created where its parent was, a refresh polls the task's provider. get-bpm and get-vox
    are Sonic's alone."""

    def __init__(self, calls: ProviderCalls, task_id: str) -> None:
        self.calls = calls
        self.task_id = task_id

    async def create(self, request: CreateRequest, *, source_is_upload: bool = False
                     ) -> Created:
        provider = await self.calls.provider_of(self.task_id)
        return await self.calls.create(provider, request, source_is_upload=source_is_upload)

    async def get_music(self, task_id: str) -> Music:
        return await self.calls.get_music(task_id)

    async def get_bpm(self, clip_id: str) -> Bpm:
        await self._sonic_task("get-bpm")
        return await self.calls.sonic_client().get_bpm(clip_id)

    async def get_vox(self, clip_id: str, vocal_start_s: float | None = None,
                      vocal_end_s: float | None = None) -> Vox:
        await self._sonic_task("get-vox")
        return await self.calls.sonic_client().get_vox(clip_id, vocal_start_s, vocal_end_s)

    async def _sonic_task(self, what: str) -> None:
        provider = await self.calls.provider_of(self.task_id)
        if provider != SONIC:  # refused as a request the service would refuse
            raise SonicValidationError(f"{what} is not offered by {provider}")
