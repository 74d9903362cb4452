"""Run records signed with the project's Nix signing key (the archive key, nixrepro.archive).

``record_sha256`` alone proves only that nobody edited the record *without recomputing it*: anyone
who can write the file can recompute it. A signature proves the record is the one the holder of the
secret key wrote. The key is a Nix ed25519 key (``nix key generate-secret``: ``name:base64`` of
libsodium's 64-byte secret, the 32-byte seed then the public key), so the key that signs the
archive's store paths also signs the records, and ``nix key convert-secret-to-public`` gives the
public key that checks both.

What is signed is ``nixrepro.run/1;<record_sha256>``: record_sha256 covers every field but itself
and the signature (summary_sha256 and the run's file hashes included), and the prefix keeps a
record signature from being taken for a Nix narinfo signature (Nix signs ``1;/nix/store/...``).
The signature is written as Nix writes one, ``<key name>:<base64 of 64 bytes>``.

``cryptography`` is imported only here, and only when a record is signed or checked, so
``import nixrepro`` and ``nixrepro run``'s start-up never pay for it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Literal

from .codec import frozen
from .errors import SigningError

PREFIX = "nixrepro.run/1;"
Verdict = Literal["good", "bad", "unknown"]


@frozen
class Checked:
    verdict: Verdict  # good: signed by a trusted key; bad: it does not verify; unknown: no such key
    key_name: str


def _split(text: str, size: int, what: str) -> tuple[str, bytes]:
    name, sep, encoded = text.strip().partition(":")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not sep or not name or len(raw) != size:
        raise SigningError(f"{what} is not a Nix ed25519 {_KINDS[size]} (name:base64 of {size} bytes)")
    return name, raw


_KINDS = {64: "secret key or signature", 32: "public key"}


def key_name(secret_key: str) -> str:
    return _split(secret_key, 64, "the signing key")[0]


def sign(secret_key: str, record_sha256: str) -> str:
    """The signature of a record whose hash is ``record_sha256``, by ``secret_key`` (Nix's format)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    name, raw = _split(secret_key, 64, "the signing key")
    signature = Ed25519PrivateKey.from_private_bytes(raw[:32]).sign((PREFIX + record_sha256).encode())
    return f"{name}:{base64.b64encode(signature).decode()}"


def check(signature: str, record_sha256: str, public_keys: Sequence[str]) -> Checked:
    """Whether ``signature`` signs ``record_sha256`` with one of ``public_keys`` (``name:base64``).

    A signature by a key none of ``public_keys`` names is ``unknown``: anyone can make a key, so
    it proves nothing here. Raises SigningError for a signature that is not Nix's format.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    name, raw = _split(signature, 64, "the record's signature")
    trusted = [_split(key, 32, f"public key {key!r}") for key in public_keys]
    matching = [public for key, public in trusted if key == name]
    if not matching:
        return Checked("unknown", name)
    for public in matching:
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(raw, (PREFIX + record_sha256).encode())
        except InvalidSignature:
            continue
        return Checked("good", name)
    return Checked("bad", name)


def public_of(secret_key: str) -> str:
    """The public key (``name:base64``) of a Nix secret key: the last 32 of its 64 bytes."""
    name, raw = _split(secret_key, 64, "the signing key")
    return f"{name}:{base64.b64encode(raw[32:]).decode()}"
