"""An optional ed25519 signature over a bundle's digest, for bundles that travel outside a fleet.

A fleet release pins :attr:`Bundle.digest <fusionedge.sdk.bundle.Bundle.digest>` in its signed
release record, so a fleet device needs nothing more. A bundle copied by hand (a USB stick, an
``scp`` to a test rig) has no such record; :func:`sign_bundle` writes ``manifest.sig`` beside the
manifest so that ``load_bundle(path, public_key=...)`` can tell it comes from whoever holds the key::

    {"algorithm": "ed25519", "digest": "<64 hex>", "keyid": "<64 hex>", "signature": "<128 hex>"}

The signed message is ``b"fusionedge-bundle-digest-v1:" + digest`` (ASCII hex), so the signature
cannot be replayed as a signature over anything else. ``keyid`` is the SHA-256 of the raw 32-byte
public key. ``manifest.sig`` is not listed in the manifest (it is made after the digest is known) and
``metrics`` is outside the digest, so ``fusionedge eval --record`` keeps a signed bundle valid.

Keys are ed25519 in PEM (the format of the fleet's key files), raw 32-byte form, or ``cryptography``
key objects. ``cryptography`` is imported only when a signature is made or checked, so the device
runtime does not need it unless signatures are used.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusionedge.sdk.bundle_schema import MANIFEST_NAME
from fusionedge.sdk.errors import BundleError, InputError
from fusionedge.sdk.fileio import loads_json, write_json_atomic

__all__ = [
    "ALGORITHM",
    "SIGNATURE_NAME",
    "key_id",
    "load_private_key",
    "load_public_keys",
    "renew_signature",
    "sign_bundle",
    "signing_for_change",
    "signed_message",
    "verify_signature",
]

#: The signature file beside ``manifest.json``.
SIGNATURE_NAME = "manifest.sig"
ALGORITHM = "ed25519"
_CONTEXT = b"fusionedge-bundle-digest-v1:"
_MAX_BYTES = 4096


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:
        raise InputError(f"bundle signatures need the 'cryptography' package (pip install "
                         f"'fusionedge[fleet]'): {e}") from e
    return ed25519


def signed_message(digest: str) -> bytes:
    """The bytes an ed25519 bundle signature covers: a fixed context, then the digest's hex."""
    return _CONTEXT + digest.encode("ascii")


def _as_bytes(key: Any) -> bytes | None:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    return None


def _load_public_key(key: Any) -> Any:
    ed25519 = _ed25519()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    data = _as_bytes(key)
    if data is not None:
        from cryptography.hazmat.primitives import serialization

        try:
            loaded = (ed25519.Ed25519PublicKey.from_public_bytes(data) if len(data) == 32
                      else serialization.load_pem_public_key(data))
        except (ValueError, TypeError) as e:
            raise InputError(f"public key: not an ed25519 public key in PEM or raw form ({e})") from e
        if isinstance(loaded, ed25519.Ed25519PublicKey):
            return loaded
    raise InputError(f"public key: not an ed25519 public key (got {type(key).__name__})")


def load_public_keys(keys: Any) -> list[Any]:
    """One trusted key, or a list of them, as ``cryptography`` ed25519 public keys.

    Raises:
        InputError: a key is not ed25519 (PEM ``SubjectPublicKeyInfo``, 32 raw bytes, or a key object),
            the list is empty, or ``cryptography`` is not installed.
    """
    many = isinstance(keys, Sequence) and not isinstance(keys, (str, bytes, bytearray))
    loaded = [_load_public_key(k) for k in (keys if many else [keys])]
    if not loaded:
        raise InputError("public key: an empty list of trusted keys trusts nothing")
    return loaded


def load_private_key(key: Any) -> Any:
    """An ed25519 private key from unencrypted PEM (PKCS#8), its 32-byte seed, or a key object.

    Raises:
        InputError: not an ed25519 private key, or ``cryptography`` is not installed.
    """
    ed25519 = _ed25519()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    data = _as_bytes(key)
    if data is not None:
        from cryptography.hazmat.primitives import serialization

        try:
            loaded = (ed25519.Ed25519PrivateKey.from_private_bytes(data) if len(data) == 32
                      else serialization.load_pem_private_key(data, password=None))
        except (ValueError, TypeError) as e:
            raise InputError(f"private key: not an ed25519 private key in PEM or raw form ({e})") from e
        if isinstance(loaded, ed25519.Ed25519PrivateKey):
            return loaded
    raise InputError(f"private key: not an ed25519 private key (got {type(key).__name__})")


def key_id(public_key: Any) -> str:
    """SHA-256 (hex) of a public key's raw 32 bytes: how ``manifest.sig`` names its signer."""
    from cryptography.hazmat.primitives import serialization

    raw = _load_public_key(public_key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def sign_bundle(path: str | os.PathLike, private_key: Any) -> Path:
    """Sign a verified bundle's digest with an ed25519 key and write ``manifest.sig`` atomically.

    Args:
        path: the bundle folder (verified first: a broken bundle is never signed).
        private_key: the ed25519 private key (see :func:`load_private_key`).

    Returns:
        The path of ``manifest.sig``.

    Raises:
        BundleError: the bundle does not verify.
        InputError: not an ed25519 private key, or ``cryptography`` is missing.
        OSError: the signature cannot be written.
    """
    from fusionedge.sdk.bundle import load_bundle

    key = load_private_key(private_key)
    bundle = load_bundle(path)
    digest = bundle.digest
    record = {"algorithm": ALGORITHM, "digest": digest, "keyid": key_id(key.public_key()),
              "signature": key.sign(signed_message(digest)).hex()}
    out = bundle.path / SIGNATURE_NAME
    write_json_atomic(out, record)
    return out


def verify_signature(root: str | os.PathLike, manifest: dict, public_keys: Sequence[Any]) -> str:
    """Check ``manifest.sig`` against the manifest's digest and the trusted keys.

    Args:
        root: the bundle folder.
        manifest: its parsed manifest.
        public_keys: trusted keys (:func:`load_public_keys`).

    Returns:
        The key id of the trusted key whose signature verified.

    Raises:
        BundleError: no signature file, an unreadable or malformed one, a signature over another
            digest, by no trusted key, or one that does not verify.
    """
    from cryptography.exceptions import InvalidSignature
    from fusionedge.sdk.bundle import manifest_digest

    path = Path(root) / SIGNATURE_NAME
    if path.is_symlink() or not path.is_file():
        raise BundleError(f"{SIGNATURE_NAME}: missing; the bundle is not signed (sign it with sign_bundle, or "
                          f"load it without public_key)")
    with open(path, "rb") as f:
        data = f.read(_MAX_BYTES + 1)
    record = loads_json(data, what=SIGNATURE_NAME, max_bytes=_MAX_BYTES, error=BundleError)
    fields = ("algorithm", "digest", "keyid", "signature")
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in fields):
        raise BundleError(f"{SIGNATURE_NAME}: expected an object with string fields {', '.join(fields)}")
    if record["algorithm"] != ALGORITHM:
        raise BundleError(f"{SIGNATURE_NAME}: algorithm {record['algorithm']!r} is not {ALGORITHM!r}")
    digest = manifest_digest(manifest)
    if record["digest"] != digest:
        raise BundleError(f"{SIGNATURE_NAME}: signs digest {record['digest'][:12]}…, the manifest has "
                          f"{digest[:12]}…: {MANIFEST_NAME} was altered after signing")
    by_id = {key_id(k): k for k in public_keys}
    key = by_id.get(record["keyid"])
    if key is None:
        raise BundleError(f"{SIGNATURE_NAME}: not signed by a trusted key (signed by key "
                          f"{record['keyid'][:12]}…, trusted: {', '.join(k[:12] + '…' for k in by_id)})")
    try:
        key.verify(bytes.fromhex(record["signature"]), signed_message(digest))
    except (InvalidSignature, ValueError) as e:
        raise BundleError(f"{SIGNATURE_NAME}: the signature does not verify with the trusted key "
                          f"{record['keyid'][:12]}…; the bundle was altered or the signature forged") from e
    return record["keyid"]


def signing_for_change(root: str | os.PathLike, change: str, sign_key: Any = None,
                       drop_signature: bool = False) -> tuple[bool, Any]:
    """Check that a change to an existing bundle may touch its signature, before anything is run.

    A change to the manifest (a calibration, a question-answering model) changes the bundle's digest,
    so an existing ``manifest.sig`` would no longer verify: the change is refused unless the bundle is
    re-signed (``sign_key``) or its signature dropped (``drop_signature``).

    Args:
        root: the bundle folder.
        change: what the change does, for the message (e.g. ``"calibrating"``).
        sign_key: an ed25519 private key (PEM bytes, raw bytes or a key object) to re-sign with.
        drop_signature: remove the signature instead.

    Returns:
        ``(signed, key)``: whether the bundle is signed now, and the loaded key (None without one);
        hand both to :func:`renew_signature` once the change is written.

    Raises:
        BundleError: the bundle is signed and neither ``sign_key`` nor ``drop_signature`` is given.
        InputError: ``sign_key`` is not an ed25519 private key.
    """
    root = Path(root)
    signed = (root / SIGNATURE_NAME).is_file()
    if signed and sign_key is None and not drop_signature:
        raise BundleError(f"{root}: the bundle is signed, and {change} changes its digest, so {SIGNATURE_NAME} "
                          f"would no longer verify; re-sign it (--sign-key) or remove the signature "
                          f"(--drop-signature)")
    key = None
    if sign_key is not None:
        key = load_private_key(sign_key)  # a bad key fails before anything is run
    return signed, key


def renew_signature(root: str | os.PathLike, signed: bool, key: Any) -> str:
    """After a change: re-sign the bundle with ``key``, or remove a stale signature.

    Returns:
        ``"signed"``, ``"removed"`` or ``"none"`` (unsigned before, and no key).
    """
    if key is not None:
        sign_bundle(root, key)
        return "signed"
    if signed:
        (Path(root) / SIGNATURE_NAME).unlink()
        return "removed"
    return "none"
