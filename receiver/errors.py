"""The one exception base of sonic-receiver and its named failures.

Every failure raised on purpose derives from :class:`ReceiverError`; a class's docstring is its
default message. Third-party errors are translated at the boundary with ``raise ... from exc``.

    ReceiverError
    ├── SettingsError           a setting is missing or invalid (start-up stops)
    ├── VerificationError       a webhook's signature cannot be accepted (401)
    ├── BodyTooLarge            a request body is over the configured limit (413)
    ├── PayloadError            a verified body cannot be used (kept raw, 422)
    ├── StoreError              the store cannot be read or written
    │   └── ValueRefused        ... because of a value the work carried (the store is there)
    └── ServeError              the port cannot be served (taken, not allowed)
"""

from __future__ import annotations


class ReceiverError(Exception):
    """sonic-receiver failed."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or type(self).__name__).strip().splitlines()[0]
        super().__init__(self.message)


class SettingsError(ReceiverError):
    """A setting is missing or invalid."""


class VerificationError(ReceiverError):
    """The webhook signature could not be verified.

    ``reason`` is a short, stable class of failure (``signature_mismatch``,
    ``timestamp_expired``...) that is safe to return to the caller and to log: it never carries
    a secret or a signature.
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        self.scheme: str | None = None  # the scheme whose header was checked, when one was
        super().__init__(message or reason.replace("_", " "))


class BodyTooLarge(ReceiverError):
    """The request body is larger than the configured limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"request body is larger than {limit} bytes")


class PayloadError(ReceiverError):
    """The verified body cannot be used as a Sonic callback."""


class StoreError(ReceiverError):
    """The store could not be read or written."""


class ValueRefused(StoreError):
    """The database refused a value the work carried (PostgreSQL: a NUL in text, a number out
    of range, an index entry past its limit): the database is there, and the same work will be
    refused again, so this is no outage."""


class ServeError(ReceiverError):
    """The port cannot be served."""
