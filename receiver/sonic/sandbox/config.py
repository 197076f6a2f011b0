"""What a sandbox is told at start: keys and credits, speed, seed, faults, webhook policy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from receiver.sonic.sandbox.faults import FaultConfig


class Speed(StrEnum):
    INSTANT = "instant"  # tests: a task settles as soon as it is created
    DEMO = "demo"  # settles within a few seconds
    REALISTIC = "realistic"  # minutes, like the service


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """When a task moves, in seconds after its creation: each task draws its own point in
    each range (deterministically, from the seed and its id)."""

    running_after_s: tuple[float, float]
    settled_after_s: tuple[float, float]  # measured from creation, not from running
    webhook_backoff_s: float  # first redelivery wait; doubles each attempt


SCHEDULES: Mapping[Speed, Schedule] = MappingProxyType(
    {
        Speed.INSTANT: Schedule(
            running_after_s=(0.0, 0.0), settled_after_s=(0.0, 0.0), webhook_backoff_s=0.0
        ),
        Speed.DEMO: Schedule(
            running_after_s=(0.3, 0.8), settled_after_s=(1.5, 4.0), webhook_backoff_s=0.5
        ),
        Speed.REALISTIC: Schedule(
            running_after_s=(5.0, 20.0), settled_after_s=(60.0, 180.0), webhook_backoff_s=5.0
        ),
    }
)

# How long a provider's media links last, where its docs say (kie.ai's download links).
PROVIDER_LINK_S: Mapping[str, float] = MappingProxyType({"kie": 20 * 60.0})

DEFAULT_API_KEY = "sandbox-key"
DEFAULT_CREDITS = 1_000


@dataclass(frozen=True, kw_only=True)
class SandboxConfig:
    """A sandbox's settings. Faults and key balances can change later, at runtime, through
    the ``/_sandbox/`` control endpoints; the rest is fixed for the app's life."""

    api_keys: Mapping[str, int] = field(
        default_factory=lambda: {DEFAULT_API_KEY: DEFAULT_CREDITS}
    )
    speed: Speed = Speed.DEMO
    schedule: Schedule | None = None  # None: the speed's
    seed: int = 0
    # Absolute base of media URLs; None: the base URL of the request that created the task.
    public_base_url: str | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)
    key_faults: Mapping[str, FaultConfig] = field(default_factory=dict)
    # Also send the older generation's X-Signature (for every key, or for these keys).
    legacy_signature: bool = False
    legacy_signature_keys: frozenset[str] = frozenset()
    # Without a webhook_secret at creation the service signs with a default of its own.
    default_webhook_secret: str = field(default="sonic-sandbox-default-secret", repr=False)
    webhook_attempts: int = 5
    webhook_timeout_s: float = 10.0
    # Length of a generated clip's new material (seconds, two decimals).
    clip_seconds: tuple[float, float] = (20.0, 60.0)
    sample_rate: int = 8_000
    upload_max_bytes: int = 20_000_000
    delivery_log_limit: int = 20_000
    # The other providers it plays (receiver.sonic.sandbox.providers): the code a failed
    # task's callback carries (sunoapi.org's), kie.ai's webhookHmacKey (None: unsigned),
    # AIMLAPI's workspace signing secret.
    failure_code: int = 501
    kie_hmac_key: str | None = field(default=None, repr=False)
    aimlapi_secret: str = field(default="whsec_c2FuZGJveC1haW1sYXBpLXNlY3JldA", repr=False)

    @property
    def timing(self) -> Schedule:
        return self.schedule or SCHEDULES[self.speed]
