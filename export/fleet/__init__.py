"""The fleet repository side: signed (TUF) model releases and rollout records, served as static files.

The device side (:mod:`fusionedge.sdk.fleet`) reads what these modules write; both use one wire
format, :mod:`fusionedge.sdk.fleet.protocol` (target paths, name and version rules, the rollout and
release records), so the two ends cannot drift apart. Modules:

* :mod:`.repo` — the operations: init, publish, rollout, timestamp, resign, rotate-key, status.
* :mod:`.keys` — signing keys (ed25519 PEM files, offline and online folders).
* :mod:`.server` — a loopback HTTP server for a repository folder (development and tests).
* :mod:`.watch` — follows device status over MQTT and pauses a failing rollout (``fleet watch``);
  ``mosquitto.acl.example`` is the broker ACL that makes each device's status its own.

Needs the ``[fleet]`` extra (python-tuf, securesystemslib[crypto]); no PyTorch. Submodules are imported
by name (``from fusionedge.export.fleet.repo import publish``); this package imports nothing itself,
so importing one tool never pulls in the others.
"""
