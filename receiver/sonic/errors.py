"""Named failures of the Sonic API, as the client raises them.

Each class's docstring is its default message (see :class:`receiver.errors.ReceiverError`).

    SonicError
    ├── SonicRequestError          the service answered and refused the call
    │   ├── SonicValidationError   400: the request breaks a rule (also raised before sending)
    │   ├── SonicAuthError         401 (or a 403 that is not about credits)
    │   ├── InsufficientCredits    403 "The remaining credits are not enough..."
    │   └── TaskNotFound           404 or "task not found."
    ├── SonicUnavailable           5xx, 504, timeouts, connection errors, after the retries
    ├── CreateOutcomeUnknown       a create may have reached the service: do not resend blindly
    └── SonicProtocolError         the answer does not have the documented shape
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from receiver.errors import ReceiverError


class SonicError(ReceiverError):
    """The Sonic API call failed."""


class SonicRequestError(SonicError):
    """The Sonic API refused the request.

    ``status`` is the HTTP status (``None`` when the client refused the request itself, before
    sending); ``code`` is the body's ``code`` field when there was one.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int | None = None,
        code: object = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.body: Mapping[str, Any] = body or {}


class SonicValidationError(SonicRequestError):
    """The request breaks a rule of the Sonic API."""

    @property
    def sent(self) -> bool:
        """Whether the service saw the request (False: the client refused it before sending)."""
        return self.status is not None


class SonicAuthError(SonicRequestError):
    """The API key is missing, malformed or not accepted."""


class InsufficientCredits(SonicRequestError):
    """The remaining credits are not enough for this task."""


class TaskNotFound(SonicRequestError):
    """task not found."""


class SonicUnavailable(SonicError):
    """The Sonic API could not be reached or kept failing."""


class CreateOutcomeUnknown(SonicError):
    """A create may have reached the Sonic API but no answer came back.

    The task may or may not exist (and may or may not have been charged). ``request`` is what
    was sent, ``endpoint`` where, so a replay script can look for the task before resending.
    """

    def __init__(self, request: object, *, endpoint: str, message: str | None = None) -> None:
        super().__init__(message)
        self.request = request
        self.endpoint = endpoint


class SonicProtocolError(SonicError):
    """The Sonic API answered in a shape the client does not understand."""
