"""sonic-receiver: a verified, durable webhook receiver for the Sonic music API.

The path of an event: :mod:`receiver.webhook` (read, verify, parse) → :mod:`receiver.recording`
(one transaction, :mod:`receiver.storage`) → the answer.
"""

from __future__ import annotations

__version__ = "0.1.0"
