"""The ingest role: what the webhook endpoint, reconciliation, replay and ``POST /tasks`` write.
Each call is one unit of work running :mod:`receiver.recording`, committed (or, for a
preview, rolled back) before it returns.
"""

from __future__ import annotations

from receiver.models import Delivery, RecordResult
from receiver.recording import record, register
from receiver.routing import Router
from receiver.storage.connector import Tx
from receiver.storage.database import Database


class Ingest:
    """Deliveries in, through the one recording algorithm."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def record_delivery(
        self, delivery: Delivery, *, router: Router | None = None
    ) -> RecordResult:
        """Record one verified delivery and the jobs ``router`` plans for it, atomically."""
        return await self.db.write(lambda tx: record(tx, delivery, router=router),
                                   locks=_task_locks(delivery))

    async def preview_delivery(
        self, delivery: Delivery, *, router: Router | None = None
    ) -> RecordResult:
        """What :meth:`record_delivery` would do, with nothing written (rolled back)."""
        return await self.db.write(lambda tx: record(tx, delivery, router=router), keep=False,
                                   locks=_task_locks(delivery))

    async def rerecord_quarantined(
        self, delivery: Delivery, *, router: Router | None = None, preview: bool = False
    ) -> RecordResult:
        """Record a quarantined delivery again (after a fix, or once its task is known): the
        quarantined row is replaced by whatever recording it now gives, in one transaction."""

        async def work(tx: Tx) -> RecordResult:
            await tx.run("delete_quarantined", {"delivery_id": delivery.delivery_id})
            return await record(tx, delivery, router=router)

        return await self.db.write(work, keep=not preview, locks=_task_locks(delivery))

    async def register_task(
        self, task_id: str, *, task_type: str, now: float, router: Router | None = None,
        provider: str = "sonic",
    ) -> None:
        """Record a task this receiver created itself (a root) through ``provider``, with its
        type, and write the jobs its already-recorded transitions owe."""
        await self.db.write(lambda tx: register(tx, task_id, task_type=task_type, parent=None,
                                                at=now, router=router, provider=provider))

    # ---- providers: callback tokens, confirmations ----

    async def add_token(self, token_hash: str, *, provider: str, now: float) -> None:
        """Keep a callback token (its hash) before the create call that carries it."""
        await self.db.write(lambda tx: tx.run("insert_token", {
            "token_hash": token_hash, "provider": provider, "at": now}))

    async def bind_token(self, token_hash: str, task_id: str) -> None:
        """The provider named the task the token was made for."""
        await self.db.write(lambda tx: tx.run("bind_token", {"token_hash": token_hash,
                                                             "task_id": task_id}))

    async def drop_token(self, token_hash: str) -> None:
        """The create call was refused: the token will never be called back."""
        await self.db.write(lambda tx: tx.run("delete_token", {"token_hash": token_hash}))

    async def find_token(self, token_hash: str) -> tuple[str, str | None] | None:
        """``(provider, task id or None while the create is in flight)`` of a token."""

        async def work(tx: Tx) -> tuple[str, str | None] | None:
            row = await tx.one("find_token", {"token_hash": token_hash})
            return None if row is None else (str(row["provider"]), row["task_id"])

        return await self.db.read(work)

    async def provider_of(self, task_id: str) -> str | None:
        """Whose the task is, or None for a task the store does not know."""

        async def work(tx: Tx) -> str | None:
            row = await tx.one("task_provider", {"task_id": task_id})
            return None if row is None else str(row["provider"])

        return await self.db.read(work)

    async def settle_unconfirmed(self, delivery_id: str, *, confirmed_by: str | None,
                                 reason: str | None = None) -> bool:
        """An unconfirmed delivery becomes ``recorded`` (``confirmed_by`` the poll that
        agreed) or ``contradicted`` (with ``reason``); False when it was settled already."""
        if confirmed_by is not None:
            done = await self.db.write(lambda tx: tx.run("confirm_delivery", {
                "delivery_id": delivery_id, "by": confirmed_by}))
        else:
            done = await self.db.write(lambda tx: tx.run("contradict_delivery", {
                "delivery_id": delivery_id, "reason": reason}))
        return bool(done)

    async def check_writable(self) -> None:
        """Raise :class:`receiver.errors.StoreError` unless a delivery can be committed now."""
        await self.db.connector.check_space()
        now = self.db.clock.now()
        await self.db.write(lambda tx: tx.run("probe_write", {"name": "ready", "at": now}))


def _task_locks(delivery: Delivery) -> tuple[str, ...]:
    """The task recording ``delivery`` will lock, when its body names it (one named only by
    its clips' ids is found, and locked, inside the unit)."""
    callback = delivery.callback
    return (callback.task_id,) if callback is not None and callback.task_id else ()
