"""Signing keys of a fleet repository: generate, save, load (ed25519, PEM files with mode 0600).

Keys live in two folders, split by where they must be kept::

    keys/offline/root/<keyid>.pem       root, targets: sign rarely (init, publish, rotation); keep them
    keys/offline/targets/<keyid>.pem    off the server (a USB stick, an HSM-backed signer, a vault)
    keys/online/snapshot/<keyid>.pem    snapshot, timestamp, rollouts: the server that refreshes the
    keys/online/timestamp/<keyid>.pem   timestamp and signs rollout records needs these
    keys/online/rollouts/<keyid>.pem

A key file is named by its TUF key id, so :func:`load_role_signers` can match files to the key ids
a role lists in the metadata and ignore stale files (e.g. a key left behind by an interrupted
rotation). Signing goes through :class:`securesystemslib.signer.CryptoSigner`; nothing here does
cryptography by hand.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from fusionedge.sdk.errors import FusionEdgeError

__all__ = [
    "OFFLINE_ROLES",
    "ONLINE_ROLES",
    "ROLES",
    "RepositoryError",
    "SigningKeyError",
    "generate_key",
    "key_folder",
    "load_key",
    "load_role_signers",
    "remove_keys",
    "save_key",
]

#: Roles whose keys should not stay on an internet-facing machine.
OFFLINE_ROLES = ("root", "targets")
#: Roles whose keys an unattended server needs (timestamp refresh, rollout records).
ONLINE_ROLES = ("snapshot", "timestamp", "rollouts")
ROLES = OFFLINE_ROLES + ONLINE_ROLES
_KEYID = re.compile(r"^[0-9a-f]{64}$")


class RepositoryError(FusionEdgeError):
    """A fleet repository operation failed: bad input, missing keys, inconsistent metadata.

    Re-exported by :mod:`fusionedge.export.fleet.repo` (its home for users); defined here, the
    lowest module of the repository side, so that key handling can raise it too.
    """


class SigningKeyError(RepositoryError):
    """A signing key is missing, unreadable, not ed25519, or does not belong to the role."""


def _crypto():
    try:
        from securesystemslib.signer import CryptoSigner
    except ImportError as e:  # pragma: no cover - depends on the install
        raise SigningKeyError(
            "signing needs securesystemslib with cryptography: pip install 'fusionedge[fleet]'"
        ) from e
    return CryptoSigner


def generate_key():
    """Generate a fresh ed25519 signing key.

    Returns:
        A ``securesystemslib.signer.CryptoSigner``; ``.public_key`` is the TUF key (``.keyid``).

    Raises:
        SigningKeyError: securesystemslib[crypto] is not installed.
    """
    return _crypto().generate_ed25519()


def key_folder(role: str, *, offline_dir: str | os.PathLike, online_dir: str | os.PathLike) -> Path:
    """The folder that holds ``role``'s private keys.

    Args:
        role: one of :data:`ROLES`.
        offline_dir: the offline key folder (``REPO/keys/offline`` by default).
        online_dir: the online key folder (``REPO/keys/online`` by default).

    Returns:
        ``offline_dir/role`` or ``online_dir/role``.

    Raises:
        SigningKeyError: ``role`` is not a repository role.
    """
    if role not in ROLES:
        raise SigningKeyError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return Path(offline_dir if role in OFFLINE_ROLES else online_dir) / role


def save_key(signer, folder: str | os.PathLike) -> Path:
    """Write a signer's private key as ``folder/<keyid>.pem`` (PKCS#8 PEM, mode 0600, never overwritten).

    The folder is created with mode 0700 if needed. The file is created exclusively with 0600
    permissions from the start (no window where it is world-readable) and fsynced.

    Args:
        signer: a ``CryptoSigner`` (from :func:`generate_key`).
        folder: the role's key folder.

    Returns:
        The path of the PEM file.

    Raises:
        SigningKeyError: a file for this key id already exists.
        OSError: the folder is not writable.
    """
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{signer.public_key.keyid}.pem"
    data = signer.private_bytes
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise SigningKeyError(f"{path}: a key file with this key id already exists") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    os.chmod(path, 0o600)  # in case the umask or the filesystem widened it
    return path


def load_key(path: str | os.PathLike):
    """Load an ed25519 private key from a PEM file.

    Args:
        path: a file written by :func:`save_key`.

    Returns:
        A ``CryptoSigner`` whose ``public_key.keyid`` is derived from the key (so it matches the
        key id recorded in the metadata).

    Raises:
        SigningKeyError: the file is missing, unreadable, not a PEM private key, or not ed25519.
    """
    CryptoSigner = _crypto()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    path = Path(path)
    try:
        private = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise SigningKeyError(f"{path}: cannot read the key file ({e})") from e
    except (ValueError, TypeError) as e:
        raise SigningKeyError(f"{path}: not an unencrypted PEM private key ({e})") from e
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: expected an ed25519 key, got {type(private).__name__}")
    return CryptoSigner(private)


def load_role_signers(folder: str | os.PathLike, keyids: Iterable[str]) -> list:
    """Load the private keys in ``folder`` whose key ids the role lists.

    Files for other key ids (e.g. left behind by an interrupted rotation) are ignored.

    Args:
        folder: the role's key folder (see :func:`key_folder`).
        keyids: the key ids the metadata lists for the role.

    Returns:
        The signers found, in the order of ``keyids`` (possibly fewer than listed; the caller
        checks the threshold).

    Raises:
        SigningKeyError: a matching file is unreadable or holds a different key than its name says.
    """
    folder = Path(folder)
    signers = []
    for keyid in keyids:
        if not _KEYID.match(keyid):
            continue
        path = folder / f"{keyid}.pem"
        if not path.is_file():
            continue
        signer = load_key(path)
        if signer.public_key.keyid != keyid:
            raise SigningKeyError(
                f"{path}: holds key {signer.public_key.keyid[:12]}…, not the key its name says")
        signers.append(signer)
    return signers


def remove_keys(folder: str | os.PathLike, keyids: Iterable[str]) -> None:
    """Delete the private key files of retired keys (after a rotation was written).

    Args:
        folder: the role's key folder.
        keyids: the key ids no longer used by the role.
    """
    for keyid in keyids:
        if _KEYID.match(keyid):
            (Path(folder) / f"{keyid}.pem").unlink(missing_ok=True)
