"""The update decision: whether this device takes the release a rollout names, and when it looks again.

Pure functions of verified records and the device's facts, so each rule is testable on its own and
the agent (:mod:`.agent`) only orchestrates:

* :func:`screen` — before anything is downloaded: a release this device rolled back is never
  retried (``skipped-bad``), a paused rollout is not started (``paused``), and a device outside the
  rollout's percent and cohorts waits (``not-eligible``, see :func:`~.protocol.is_eligible`);
* :func:`check_newer` — a release is installed only when its per-model counter is higher than the
  installed one's: a validly signed older release is a downgrade, refused;
* :func:`incompatibility` — device class, minimum SDK version and at least one usable backend;
* :func:`poll_intervals` — the waits between checks: ``interval_s`` with a jitter (±20% by default)
  drawn from a generator seeded with the device id. A fleet that reboots together (a power cut, a
  site-wide update) would otherwise poll together forever, in bursts the release server must
  absorb; with the jitter the checks spread over 40% of the interval after the first one, and each
  device keeps its own reproducible sequence.

:class:`UpdateOutcome` is what one check ended in.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from fusionedge.sdk.errors import InputError, UpdateError, VerificationError
from fusionedge.sdk.fleet.protocol import Release, Rollout, is_eligible, version_key

__all__ = ["ACTIONS", "DEFAULT_JITTER", "UpdateOutcome", "check_newer", "incompatibility", "poll_intervals",
           "screen"]

#: What a check can end in (``UpdateOutcome.action``).
ACTIONS = ("updated", "up-to-date", "no-rollout", "paused", "not-eligible", "incompatible", "skipped-bad",
           "rolled-back", "failed")
#: Default poll jitter: each wait is ``interval_s * (1 ± 0.2)``.
DEFAULT_JITTER = 0.2


@dataclass(frozen=True)
class UpdateOutcome:
    """What one :meth:`Agent.check_once <fusionedge.sdk.fleet.agent.Agent.check_once>` did.

    ``action`` is one of :data:`ACTIONS`; ``error`` holds the typed error for ``failed``,
    ``rolled-back`` and ``incompatible`` (a :class:`DownloadError` or :class:`VerificationError`);
    ``running`` is ``model@version`` of the release ``current`` points to after the check.
    With an ``engine_fingerprint`` callable, ``health["engine"]`` says what the engine step did:
    ``{"fingerprint": str | None, "prebuilt": bool}`` (+ ``"error"`` when no fingerprint could be had).
    """

    action: str
    release: Release | None = None
    running: str | None = None
    error: UpdateError | None = None
    health: dict = field(default_factory=dict)  # self-test error, latencies (ms), backend
    timings: dict = field(default_factory=dict)  # ms per step

    @property
    def ok(self) -> bool:
        """True when the check ended without an error."""
        return self.error is None

    def to_dict(self) -> dict:
        """A JSON-safe dict (the error as ``{type, message}``)."""
        return {
            "action": self.action,
            "release": self.release.to_dict() if self.release else None,
            "running": self.running,
            "error": None if self.error is None else {"type": type(self.error).__name__,
                                                      "message": str(self.error)},
            "health": dict(self.health),
            "timings": {k: round(float(v), 3) for k, v in self.timings.items()},
        }


def screen(rollout: Rollout, *, device_id: str, cohort: str | None, is_bad: bool) -> str | None:
    """The action that ends a check before any download, or None when the device takes the release.

    ``skipped-bad`` is said before ``paused``: it is the device's own verdict on this release.
    """
    if is_bad:
        return "skipped-bad"
    if rollout.paused:
        return "paused"
    if not is_eligible(rollout, device_id, cohort):
        return "not-eligible"
    return None


def check_newer(release: Release, current: Release | None) -> None:
    """Refuse a release whose counter is not above the installed one's (a downgrade).

    Raises:
        VerificationError: ``release`` is not newer than ``current``.
    """
    if current is not None and release.release <= current.release:
        raise VerificationError(f"{release.label} is not newer than the installed {current.label}: rollback "
                                f"to an older release refused")


def incompatibility(release: Release, *, device_class: str, sdk_version: str,
                    device_backends: Sequence[str]) -> str | None:
    """Why ``release`` cannot run on this device, or None when it can.

    Args:
        release: the verified release (its ``compat`` block).
        device_class: this device's class; the release must list it.
        sdk_version: the runtime version here, compared with the release's ``min_sdk``.
        device_backends: the agent's backends that are available here, in preference order.
    """
    compat = release.compat
    classes = compat.get("device_classes")
    if not isinstance(classes, list) or device_class not in classes:
        return f"built for device classes {classes!r}, not {device_class!r}"
    min_sdk = compat.get("min_sdk")
    if min_sdk is not None and version_key(sdk_version) < version_key(str(min_sdk)):
        return f"needs fusionedge >= {min_sdk}, this device runs {sdk_version}"
    wanted = compat.get("backends") or []
    if not isinstance(wanted, list):
        return f"compat.backends must be a list, got {wanted!r}"
    if wanted and not set(wanted) & set(device_backends):
        return f"needs one of the backends {wanted}, this device has {list(device_backends) or 'none'} available"
    return None


def poll_intervals(device_id: str, interval_s: float, jitter: float = DEFAULT_JITTER) -> Iterator[float]:
    """The waits between the starts of two checks: ``interval_s * (1 + u)``, ``u`` uniform in ±``jitter``.

    The generator is seeded with sha256 of the device id, so a device's sequence is the same after a
    restart and two devices' sequences are independent.

    Args:
        device_id: this device's id.
        interval_s: the mean interval, seconds (> 0).
        jitter: the largest relative deviation, from 0 (fixed interval) to 0.9.

    Raises:
        InputError: ``interval_s`` <= 0 or ``jitter`` outside [0, 0.9].
    """
    if not interval_s > 0:
        raise InputError(f"interval_s must be > 0, got {interval_s!r}")
    if not 0 <= jitter <= 0.9:
        raise InputError(f"jitter must be from 0 to 0.9, got {jitter!r}")
    seed = int.from_bytes(hashlib.sha256(f"poll:{device_id}".encode()).digest()[:8], "big")
    return _jittered(random.Random(seed), float(interval_s), float(jitter))


def _jittered(rng: random.Random, interval_s: float, jitter: float) -> Iterator[float]:
    while True:
        yield interval_s * (1.0 + jitter * rng.uniform(-1.0, 1.0))
