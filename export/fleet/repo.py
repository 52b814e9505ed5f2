"""The fleet repository's operations: signed (TUF) releases of model bundles and rollout records.

A repository is a folder of static files; only ``metadata/`` and ``targets/`` are served (the layout,
the roles and where to run what are in ``export/FLEET.md``). Roles: ``root`` and ``targets`` (offline
keys), ``snapshot`` and ``timestamp`` (online), and ``rollouts``, delegated by ``targets`` for
``rollouts/*`` (online key), so rollout records are signed without the offline targets key. Records
and target paths follow the wire format the devices parse (:mod:`fusionedge.sdk.fleet.protocol`);
signing and writing role metadata is :mod:`.roles`. Each step is a function and a ``fusionedge fleet``
verb::

    init_repository(repo)                               keys + version-1 metadata
    publish(repo, bundle_dir, model=, version=, ...)    -> release number (golden self-test, then sign)
    set_rollout(repo, model=, version=, percent=, ...)  -> the signed rollout record (online keys)
    refresh_timestamp(repo)                             daily from cron (online keys)
    rotate_key(repo, role)                              replace a role's keys; clients follow
    resign(repo, role)                                  renew a role's expiry (e.g. targets every 60 d)

Every operation holds the repository's lock and writes targets, then role metadata, then snapshot,
then the timestamp, each file atomically: a client fetching meanwhile sees the old or the new
consistent snapshot. ``now=`` (the signing clock) lets tests make metadata that has already expired.

The module is a little past 600 lines: it is the public operations, one function each, over the
signing and writing of role metadata in ``roles.py``.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import secrets
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fusionedge.export.fleet.keys import (
    OFFLINE_ROLES,
    ONLINE_ROLES,
    ROLES,
    RepositoryError,
    SigningKeyError,
    generate_key,
    remove_keys,
    save_key,
)
from fusionedge.export.fleet.roles import (
    CONFIG_NAME,
    CONFIG_SCHEMA,
    DEFAULT_EXPIRY,
    RepoState,
    check_role,
    iso,
    locked,
    open_repo,
    repo_paths,
    role_ints,
    tuf,
    utcnow,
)
from fusionedge.sdk.bundle import MANIFEST_NAME, Bundle, load_bundle
from fusionedge.sdk.errors import BackendError, BundleError, VerificationError
from fusionedge.sdk.fleet.protocol import (
    ROLLOUTS_ROLE,
    Release,
    Rollout,
    bundle_target_path,
    check_fingerprint,
    check_name,
    check_version,
    engine_sidecar_target_path,
    engine_target_path,
    manifest_target_path,
    rollout_target_path,
)

__all__ = [
    "DEFAULT_EXPIRY",
    "OFFLINE_ROLES",
    "ONLINE_ROLES",
    "ROLES",
    "RepositoryError",
    "SigningKeyError",
    "bundle_target_path",
    "init_repository",
    "publish",
    "refresh_timestamp",
    "repository_status",
    "resign",
    "rollout_target_path",
    "rotate_key",
    "set_rollout",
]

log = logging.getLogger(__name__)


def _check_name(value: Any, what: str) -> str:
    return check_name(value, what, RepositoryError)


def _check_version(value: Any, what: str = "version") -> str:
    return check_version(value, what, RepositoryError)


# ------------------------------------------------------------------------------------------- init


def init_repository(
    repo: str | os.PathLike,
    *,
    thresholds: Mapping[str, int] | None = None,
    key_counts: Mapping[str, int] | None = None,
    expiry: Mapping[str, timedelta] | None = None,
    offline_keys: str | os.PathLike | None = None,
    online_keys: str | os.PathLike | None = None,
    now: datetime | None = None,
) -> Path:
    """Create a fleet repository: fresh ed25519 keys for every role and version-1 metadata.

    Args:
        repo: the repository folder (created if missing; must not hold a repository already).
        thresholds: signatures each role needs, e.g. ``{"root": 2}`` (default 1 for every role).
        key_counts: keys generated per role (default: its threshold; must be >= the threshold).
        expiry: validity period per role after each signing (defaults: :data:`DEFAULT_EXPIRY`).
        offline_keys: where to write the root and targets keys (default ``REPO/keys/offline``).
        online_keys: where to write the snapshot, timestamp and rollouts keys (default ``REPO/keys/online``).
        now: the signing clock (default: the current time, UTC).

    Returns:
        The path of ``metadata/root.json``: the trust anchor to embed in device images.

    Raises:
        RepositoryError: a repository already exists there, or a threshold, key count or expiry is
            invalid (nothing is written then).
    """
    metadata, _, _ = tuf()
    paths = repo_paths(repo, offline_keys, online_keys)
    now = utcnow(now)
    need = role_ints(thresholds, "threshold")
    counts = role_ints({**need, **(key_counts or {})}, "key count")
    for role in ROLES:
        if counts[role] < need[role]:
            raise RepositoryError(f"{role}: {counts[role]} keys cannot meet a threshold of {need[role]}")
    periods = dict(DEFAULT_EXPIRY)
    for role, period in (expiry or {}).items():
        check_role(role)
        if not isinstance(period, timedelta) or period <= timedelta(0):
            raise RepositoryError(f"expiry for {role}: expected a positive timedelta, got {period!r}")
        periods[role] = period
    if paths.config.exists() or (paths.metadata / "root.json").exists():
        raise RepositoryError(f"{paths.root}: already holds a fleet repository")

    paths.root.mkdir(parents=True, exist_ok=True)
    for folder in (paths.metadata, paths.targets):
        folder.mkdir(exist_ok=True)
    for folder in (paths.offline_keys, paths.online_keys):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with locked(paths):
        # Keys first: metadata that names a key nobody saved would be unusable.
        keys: dict[str, list] = {}
        for role in ROLES:
            keys[role] = [generate_key() for _ in range(counts[role])]
            for signer in keys[role]:
                save_key(signer, paths.key_folder(role))
        root = metadata.Root(consistent_snapshot=True)
        for role in ("root", "targets", "snapshot", "timestamp"):
            for signer in keys[role]:
                root.add_key(signer.public_key, role)
            root.roles[role].threshold = need[role]
        targets = metadata.Targets()
        targets.delegations = metadata.Delegations(
            keys={s.public_key.keyid: s.public_key for s in keys[ROLLOUTS_ROLE]},
            roles={ROLLOUTS_ROLE: metadata.DelegatedRole(
                name=ROLLOUTS_ROLE, keyids=[s.public_key.keyid for s in keys[ROLLOUTS_ROLE]],
                threshold=need[ROLLOUTS_ROLE], terminating=True, paths=[f"{ROLLOUTS_ROLE}/*"])},
        )
        config = {
            "schema_version": CONFIG_SCHEMA,
            "thresholds": need,
            "expiry_days": {role: periods[role] / timedelta(days=1) for role in ROLES},
            "models": {},
        }
        state = RepoState(paths, config, {
            "root": metadata.Metadata(root),
            "targets": metadata.Metadata(targets),
            ROLLOUTS_ROLE: metadata.Metadata(metadata.Targets()),
            "snapshot": metadata.Metadata(metadata.Snapshot()),
            "timestamp": metadata.Metadata(metadata.Timestamp()),
        })
        state.sign("root", state.md["root"], now, bump=False)
        state.write("root", state.md["root"])
        state.commit({"targets", ROLLOUTS_ROLE}, now, bump=False)
        state.save_config()
    log.info("initialized fleet repository %s", paths.root)
    return paths.metadata / "root.json"


# ---------------------------------------------------------------------------------------- publish


def _default_min_sdk(manifest: Mapping) -> str:
    version = str(manifest.get("source", {}).get("fusionedge_version", "0.1.0"))
    try:
        return check_version(version, "min_sdk")
    except VerificationError:
        return "0.1.0"


def _golden_self_test(bundle: Bundle, model: str, version: str) -> None:
    """Run the bundle's golden inputs on ONNX Runtime; refuse NaN/Inf or outputs outside the tolerance.

    The hashes of a bundle say its files are the ones exported, not that the model computes anything
    sensible: a model that outputs NaN has valid hashes. Signing is the last point where a person can
    still stop it, so the repository refuses to sign what fails its own golden test.
    """
    from fusionedge.sdk.selftest import run_golden

    try:
        report = run_golden(bundle, backend="onnxruntime", backend_options={"intra_op_threads": 1})
    except (BundleError, BackendError) as e:
        raise RepositoryError(f"refusing to publish {model} {version}: its golden self-test failed "
                              f"({e})") from e
    log.info("golden self-test of %s passed on %s (max abs error %.3g)", bundle.model_id, report.backend,
             report.max_abs_err)


def publish(
    repo: str | os.PathLike,
    bundle_dir: str | os.PathLike,
    *,
    model: str,
    version: str,
    device_classes: Sequence[str],
    min_sdk: str | None = None,
    engines: Mapping[str, str | os.PathLike] | None = None,
    backends: Sequence[str] | None = None,
    offline_keys: str | os.PathLike | None = None,
    online_keys: str | os.PathLike | None = None,
    now: datetime | None = None,
    self_test: bool = True,
) -> int:
    """Publish a bundle as a new release of ``model``: archive it, add the targets, re-sign.

    Adds the targets ``models/<model>/<version>/bundle.tar`` (with the ``custom["fusionedge"]``
    fields the device checks), ``.../manifest.json`` and one ``.../engines/<fingerprint>.plan`` per
    prebuilt engine. A release is not rolled out until :func:`set_rollout` names it.

    Args:
        repo: the repository folder.
        bundle_dir: a bundle folder; it is verified (schema and hashes) before anything is written.
        model: the fleet's name for the model (may differ from the bundle's own name).
        version: the release version (semantic version); must not be published yet.
        device_classes: the device classes this release may run on (at least one), e.g.
            ``["jetson-orin", "x86-cpu"]``.
        min_sdk: the oldest fusionedge runtime that can run it (default: the version that exported it).
        engines: prebuilt TensorRT plans, ``{device fingerprint: plan file}``; a plan's sidecar
            (``<plan>.json``, written by ``fusionedge engine build``) is published with it when present.
        backends: backends the release supports (default ``onnxruntime``, plus ``tensorrt`` with engines).
        offline_keys: folder holding the targets key (default ``REPO/keys/offline``).
        online_keys: folder holding the snapshot and timestamp keys (default ``REPO/keys/online``).
        now: the signing clock (default: the current time).
        self_test: run the bundle's golden self-test on ONNX Runtime before anything is signed, and
            refuse a model that outputs NaN/Inf or differs from its golden outputs beyond the
            manifest's tolerance (default). False skips it (a release machine without ONNX Runtime);
            devices still run it in their health check before they commit.

    Returns:
        The release number: a per-model counter, one higher than the model's previous release.

    Raises:
        RepositoryError: a bad name or version, the version is already published, the golden
            self-test failed, or a signing key is missing (SigningKeyError); nothing is published then.
        BundleError: the bundle folder is not a valid bundle.
    """
    _check_name(model, "model")
    _check_version(version)
    classes = [_check_name(c, "device class") for c in device_classes]
    if not classes:
        raise RepositoryError("publish needs at least one device class (e.g. --device-class jetson-orin)")
    engines = dict(engines or {})
    for fingerprint, plan in engines.items():
        check_fingerprint(fingerprint, error=RepositoryError)
        if not Path(plan).is_file():
            raise RepositoryError(f"engine {fingerprint}: plan file {plan} not found")
    backend_list = list(backends) if backends is not None else (
        ["onnxruntime"] + (["tensorrt"] if engines else []))
    for b in backend_list:
        _check_name(b, "backend")
    bundle = load_bundle(bundle_dir)  # BundleError names the bad file / field
    min_sdk = _check_version(min_sdk if min_sdk is not None else _default_min_sdk(bundle.manifest), "min_sdk")
    if self_test:
        _golden_self_test(bundle, model, version)
    if bundle.version != version:
        log.warning("publishing bundle %s (manifest version %s) as %s %s", bundle.path, bundle.version,
                    model, version)
    try:
        from fusionedge.sdk.bundle_archive import pack_bundle
    except ImportError as e:  # pragma: no cover - the device side ships it
        raise RepositoryError("fusionedge.sdk.bundle_archive is missing: cannot archive the bundle") from e

    now = utcnow(now)
    target = bundle_target_path(model, version)
    with open_repo(repo, offline_keys, online_keys) as state:
        existing = state.md["targets"].signed.targets.get(target)
        if existing is not None:
            release = existing.custom.get("fusionedge", {}).get("release") if existing.custom else None
            raise RepositoryError(
                f"{model} {version} is already published (release {release}); publish a new version"
            )
        state.require("targets", "snapshot", "timestamp")
        entry = state.config["models"].setdefault(model, {"release_counter": 0, "rollout_seq": 0,
                                                          "versions": {}, "rollout": None})
        release = int(entry["release_counter"]) + 1
        with tempfile.TemporaryDirectory(prefix=".publish-", dir=state.paths.root) as work:
            archive = Path(work) / "bundle.tar"
            pack_bundle(bundle.path, archive)
            engine_paths = {fp: engine_target_path(model, version, fp) for fp in engines}
            manifest_target = manifest_target_path(model, version)
            new_targets = {manifest_target: state.add_target(manifest_target, bundle.path / MANIFEST_NAME)}
            for fp, plan in engines.items():
                new_targets[engine_paths[fp]] = state.add_target(engine_paths[fp], Path(plan))
                # The sidecar `fusionedge engine build` writes beside a plan (its full fingerprint and
                # sha256) travels with it: the TensorRT backend loads a plan only through its sidecar.
                sidecar = Path(plan).with_suffix(".json")
                if sidecar.is_file():
                    side_target = engine_sidecar_target_path(engine_paths[fp])
                    new_targets[side_target] = state.add_target(side_target, sidecar)
            sha = _sha256(archive)
            record = Release(
                model=model, version=version, release=release, sha256=sha, length=archive.stat().st_size,
                target=target, engines=engine_paths, digest=bundle.digest,
                compat={"device_classes": classes, "min_sdk": min_sdk, "backends": backend_list,
                        "precision": bundle.precision},
            )
            new_targets[target] = state.add_target(target, archive, record.custom())
        # Counter first: a crash after this leaves a gap in release numbers, never a duplicate.
        entry["release_counter"] = release
        entry["versions"][version] = {"release": release, "salt": secrets.token_hex(16),
                                      "published": iso(now), "bundle_sha256": sha}
        state.save_config()
        state.md["targets"].signed.targets.update(new_targets)
        state.commit({"targets"}, now)
    log.info("published %s %s as release %d", model, version, release)
    return release


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------- rollout


def set_rollout(
    repo: str | os.PathLike,
    *,
    model: str,
    version: str,
    percent: float | None = None,
    cohorts: Sequence[str] | None = None,
    paused: bool | None = None,
    online_keys: str | os.PathLike | None = None,
    now: datetime | None = None,
) -> dict:
    """Write and sign the rollout record ``rollouts/<model>.json`` (online keys only).

    Devices decide eligibility themselves: ``bucket(salt, device_id) < percent`` or their cohort is
    listed, and not paused. The salt is fixed per release, so raising the percent never removes a
    device that was already eligible.

    Args:
        repo: the repository folder.
        model: a published model.
        version: a published version of it (rolling back to an older version is allowed).
        percent: share of devices, 0 to 100. None keeps the current record's percent (the current
            record must then be for this version).
        cohorts: cohorts that get the release regardless of percent. None keeps the current record's
            cohorts for this version (none for a new version).
        paused: True pauses, False resumes; None keeps the current state (not paused for a new version).
        online_keys: folder holding the rollouts, snapshot and timestamp keys (default ``REPO/keys/online``).
        now: the signing clock (default: the current time).

    Returns:
        The record as written: ``model, version, release, percent, cohorts, paused, salt, issued, seq``.

    Raises:
        RepositoryError: the version is not published, percent is out of range or missing, a cohort
            name is invalid, or an online key is missing (SigningKeyError).
    """
    _check_name(model, "model")
    _check_version(version)
    if percent is not None and (isinstance(percent, bool) or not isinstance(percent, (int, float))
                                or not 0 <= percent <= 100):
        raise RepositoryError(f"percent {percent!r}: expected a number from 0 to 100")
    if cohorts is not None:
        cohorts = [_check_name(c, "cohort") for c in cohorts]
    if paused is not None and not isinstance(paused, bool):
        raise RepositoryError(f"paused {paused!r}: expected True, False or None")
    now = utcnow(now)
    with open_repo(repo, None, online_keys) as state:
        target = state.md["targets"].signed.targets.get(bundle_target_path(model, version))
        entry = state.config["models"].get(model)
        if target is None or entry is None:
            raise RepositoryError(f"{model} {version} is not published; publish it before rolling it out")
        state.require(ROLLOUTS_ROLE, "snapshot", "timestamp")
        versions = entry["versions"]
        if version not in versions:  # metadata written but the config lost it: recover from metadata
            versions[version] = {"release": target.custom["fusionedge"]["release"],
                                 "salt": secrets.token_hex(16), "published": iso(now)}
        previous = entry.get("rollout") if (entry.get("rollout") or {}).get("version") == version else None
        if percent is None:
            if previous is None:
                raise RepositoryError(f"{model} {version} has no rollout yet: give a percent")
            percent = previous["percent"]
        try:
            rollout = Rollout(
                model=model, version=version, release=int(versions[version]["release"]), percent=percent,
                cohorts=tuple(sorted(set(cohorts if cohorts is not None
                                         else (previous or {}).get("cohorts", [])))),
                paused=paused if paused is not None else bool((previous or {}).get("paused", False)),
                salt=versions[version]["salt"], issued=iso(now), seq=int(entry.get("rollout_seq", 0)) + 1,
            )
        except VerificationError as e:  # the config holds something the wire format refuses
            raise RepositoryError(f"{CONFIG_NAME}: {e}") from e
        record = rollout.to_dict()
        entry["rollout_seq"] = rollout.seq
        entry["rollout"] = record
        state.save_config()
        data = rollout.to_json()
        with tempfile.TemporaryDirectory(prefix=".rollout-", dir=state.paths.root) as work:
            src = Path(work) / f"{model}.json"
            src.write_bytes(data)
            path = rollout_target_path(model)
            state.md[ROLLOUTS_ROLE].signed.targets[path] = state.add_target(path, src)
        state.commit({ROLLOUTS_ROLE}, now)
    return record


# ------------------------------------------------------------------------------- expiry and keys


def refresh_timestamp(
    repo: str | os.PathLike,
    *,
    online_keys: str | os.PathLike | None = None,
    now: datetime | None = None,
) -> dict:
    """Re-sign the timestamp with a new expiry; also renew snapshot and rollouts when half their life is gone.

    Run it from cron well inside the timestamp period (e.g. every 6 hours for the default 1 day).
    Only online keys are used. Offline roles close to expiry are reported, not renewed.

    Args:
        repo: the repository folder.
        online_keys: folder holding the online keys (default ``REPO/keys/online``).
        now: the signing clock (default: the current time).

    Returns:
        ``{"timestamp": {"version", "expires"}, "renewed": [roles], "expiring": {role: expires}}``,
        where ``expiring`` lists offline roles (root, targets) with less than a third of their period
        left: renew them with :func:`resign` and the offline keys.

    Raises:
        RepositoryError: an online key is missing (SigningKeyError) or the repository is unreadable.
    """
    now = utcnow(now)
    with open_repo(repo, None, online_keys) as state:
        state.require("timestamp")
        renewed = {role for role in (ROLLOUTS_ROLE, "snapshot")
                   if state.md[role].signed.expires - now < state.expiry(role) / 2}
        if renewed:
            renewed.add("snapshot")  # a renewed rollouts role is a new snapshot too
        state.require(*renewed)
        state.commit(renewed, now)
        expiring = {role: iso(state.md[role].signed.expires) for role in OFFLINE_ROLES
                    if state.md[role].signed.expires - now < state.expiry(role) / 3}
        ts = state.md["timestamp"].signed
        return {"timestamp": {"version": ts.version, "expires": iso(ts.expires)},
                "renewed": sorted(renewed), "expiring": expiring}


def resign(
    repo: str | os.PathLike,
    role: str,
    *,
    offline_keys: str | os.PathLike | None = None,
    online_keys: str | os.PathLike | None = None,
    now: datetime | None = None,
) -> int:
    """Re-sign one role with a new version and expiry (its keys unchanged); snapshot and timestamp follow.

    Args:
        repo: the repository folder.
        role: root, targets, snapshot, timestamp or rollouts.
        offline_keys: folder holding root/targets keys (default ``REPO/keys/offline``).
        online_keys: folder holding the online keys (default ``REPO/keys/online``).
        now: the signing clock (default: the current time).

    Returns:
        The role's new metadata version.

    Raises:
        RepositoryError: unknown role, or its keys (or the online keys) are missing.
    """
    check_role(role)
    now = utcnow(now)
    with open_repo(repo, offline_keys, online_keys) as state:
        state.require(role, "snapshot", "timestamp")
        if role == "root":
            state.sign("root", state.md["root"], now)
            state.write("root", state.md["root"])
            state.commit(set(), now)
        else:
            state.commit({role}, now)
        return state.md[role].signed.version


def rotate_key(
    repo: str | os.PathLike,
    role: str,
    *,
    offline_keys: str | os.PathLike | None = None,
    online_keys: str | os.PathLike | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Replace every key of ``role`` with a fresh one (same count and threshold); clients follow.

    Top-level roles change in a new root version, signed by the root keys — for root itself by
    the old keys (to the old threshold) and the new ones, so a client holding the old root accepts
    the chain ``N.root.json → N+1.root.json``. The ``rollouts`` keys live in the targets
    delegation, so rotating them re-signs targets (offline key). The rotated role is then
    re-signed with its new keys, then snapshot and timestamp. The old private key files are deleted.

    Args:
        repo: the repository folder.
        role: root, targets, snapshot, timestamp or rollouts.
        offline_keys: folder holding root/targets keys (default ``REPO/keys/offline``).
        online_keys: folder holding the online keys (default ``REPO/keys/online``).
        now: the signing clock (default: the current time).

    Returns:
        The new key ids.

    Raises:
        RepositoryError: unknown role, or a key needed to sign the change is missing (nothing is
            changed then; new key files may remain and are ignored).
    """
    check_role(role)
    now = utcnow(now)
    with open_repo(repo, offline_keys, online_keys) as state:
        old_ids, _ = state.role_keys(role)
        delegator = "targets" if role == ROLLOUTS_ROLE else "root"
        # Only keys that will sign are needed: a lost or compromised key of the rotated role is not.
        old_root_signers = state.signers("root") if role == "root" else []
        if role != "root":
            state.require(*({delegator, "snapshot", "timestamp"} - {role}))
        new = [generate_key() for _ in old_ids]
        for signer in new:
            save_key(signer, state.paths.key_folder(role))
        if role == ROLLOUTS_ROLE:
            targets = state.md["targets"].signed
            for keyid in old_ids:
                targets.revoke_key(keyid, ROLLOUTS_ROLE)
            for signer in new:
                targets.add_key(signer.public_key, ROLLOUTS_ROLE)
            state.commit({"targets", ROLLOUTS_ROLE}, now)
        else:
            old_root = state.md["root"]
            new_root = copy.deepcopy(old_root)
            for keyid in old_ids:
                new_root.signed.revoke_key(keyid, role)
            for signer in new:
                new_root.signed.add_key(signer.public_key, role)
            state.md["root"] = new_root
            try:
                # Old keys to the old threshold (checked against the old root), and the new keys.
                state.sign("root", new_root, now, extra=old_root_signers)
                old_root.signed.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
            except Exception:
                state.md["root"] = old_root
                raise
            state.write("root", new_root)
            if role != "root":
                state.commit({role} - {"timestamp"}, now)
        remove_keys(state.paths.key_folder(role), old_ids)
        log.info("rotated %s keys: %s", role, ", ".join(s.public_key.keyid[:12] for s in new))
        return [s.public_key.keyid for s in new]


# ----------------------------------------------------------------------------------------- status


def repository_status(repo: str | os.PathLike) -> dict:
    """Describe a repository: each role's version, expiry, threshold and key ids; models and rollouts.

    Needs no keys.

    Args:
        repo: the repository folder.

    Returns:
        ``{"repo", "roles": {role: {"version", "expires", "threshold", "keyids"}},
        "models": {model: {"versions": {version: release}, "rollout": record or None}}}``.

    Raises:
        RepositoryError: not a repository, or its metadata is unreadable.
    """
    with open_repo(repo, None, None) as state:
        roles = {}
        for role in ROLES:
            keyids, threshold = state.role_keys(role)
            signed = state.md[role].signed
            roles[role] = {"version": signed.version, "expires": iso(signed.expires),
                           "threshold": threshold, "keyids": keyids}
        models = {name: {"versions": {v: info["release"] for v, info in entry["versions"].items()},
                         "rollout": entry.get("rollout")}
                  for name, entry in state.config["models"].items()}
        return {"repo": str(state.paths.root), "roles": roles, "models": models}
