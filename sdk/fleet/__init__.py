"""Fleet updates on the device: signed releases (TUF) in, a health-checked model out, the old one kept.

::

    from fusionedge.sdk.fleet import Agent, HotSwapPerception

    live = HotSwapPerception.load("/var/lib/fusionedge/current")
    agent = Agent(url, "cam-042", "/var/lib/fusionedge", device_class="jetson-orin", model="student",
                  root="/etc/fusionedge/root.json", mqtt="broker:1883", on_commit=live.on_commit)
    agent.recover()
    agent.run(interval_s=300)

* :mod:`.agent` — :class:`Agent`: one check = refresh (python-tuf), eligibility, compatibility,
  download, verification, A/B install, health check, commit or rollback; ``run`` polls with jitter.
* :mod:`.protocol` — the wire format shared with the repository tools (``fusionedge.export.fleet``):
  target paths, name/version rules, the :class:`Rollout` and :class:`Release` records, eligibility.
* :mod:`.fetch` — bounded HTTP: a total deadline per request, headers included; resumable downloads.
* :mod:`.store` — the state folder: staging, the archive store, the A/B links, the bad-release list.
* :mod:`.recovery` — journal replay after a crash.
* :mod:`.decision` — whether a release is taken (eligible, newer, compatible) and the poll schedule.
* :mod:`.prebuilt` / :mod:`.health` — the prebuilt-engine step and the health check.
* :mod:`.journal` — the crash-safe step log that makes every step recoverable after ``kill -9``.
* :mod:`.status` — ``status.json`` and the retained MQTT status message.
* :mod:`.hotswap` — :class:`HotSwapPerception`: swap models under a running inference loop.

Needs the ``[fleet]`` extra (tuf, securesystemslib, paho-mqtt), imported only when used. Rollout
monitoring (``fleet watch``) runs on the release server and lives in ``fusionedge.export.fleet.watch``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from fusionedge.sdk.fleet.agent import Agent, Release, Rollout, UpdateOutcome, bucket, is_eligible
    from fusionedge.sdk.fleet.hotswap import HotSwapPerception
    from fusionedge.sdk.fleet.journal import Journal
    from fusionedge.sdk.fleet.status import StatusReporter, status_topic

_LAZY: dict[str, str] = {
    "Agent": "fusionedge.sdk.fleet.agent",
    "UpdateOutcome": "fusionedge.sdk.fleet.agent",
    "Release": "fusionedge.sdk.fleet.agent",
    "Rollout": "fusionedge.sdk.fleet.agent",
    "bucket": "fusionedge.sdk.fleet.agent",
    "is_eligible": "fusionedge.sdk.fleet.agent",
    "HotSwapPerception": "fusionedge.sdk.fleet.hotswap",
    "Journal": "fusionedge.sdk.fleet.journal",
    "StatusReporter": "fusionedge.sdk.fleet.status",
    "status_topic": "fusionedge.sdk.fleet.status",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fusionedge.sdk.fleet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
