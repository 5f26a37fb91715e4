"""The Ed25519 key that signs record manifests: made on first use, kept in the data directory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_KEY_FILE = "signing-key.pem"
PUBLIC_KEY_FILE = "signing-key.pub.pem"


class KeyFileError(ValueError):
    """A key file that cannot be read as an Ed25519 key."""


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its SHA-256."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_or_create_key(key_dir: str | Path) -> Ed25519PrivateKey:
    """The signing key in `key_dir`, generated (mode 0600) and its public half written if absent."""
    folder = Path(key_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PRIVATE_KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path} is not an Ed25519 private key")
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    pub = folder / PUBLIC_KEY_FILE
    if not pub.exists():
        pub.write_bytes(public_pem(key.public_key()))
    return key


def load_public_key(source: str | Path | bytes) -> Ed25519PublicKey:
    """A public key from a PEM file path, PEM bytes, or 64 hex digits of the raw key."""
    if isinstance(source, bytes):
        data = source
    else:
        text = str(source)
        if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
            return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
        data = Path(text).read_bytes()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFileError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError("not an Ed25519 public key")
    return key


def signature_ok(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True
