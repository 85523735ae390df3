"""Raw envelopes are sealed (AES-256-GCM) before they are written to the ingest queue.

An envelope holds whatever the app sent, secrets included, until the digester has scrubbed
it; sealing keeps those bytes unreadable in the database and its backups in the meantime.
The key is derived from the server secret; envelopes sealed under a previous secret still
open while a rotation is under way.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shipyard.core.crypto import derive_key

_PURPOSE = "errors-raw-envelopes"
_VERSION = b"\x01"


class Sealer:
    def __init__(self, current_secret: str, previous_secrets: list[str] | None = None) -> None:
        self._keys: list[tuple[bytes, AESGCM]] = []
        for secret in [current_secret, *(previous_secrets or [])]:
            key = derive_key(secret, _PURPOSE)
            self._keys.append((hashlib.sha256(key).digest()[:4], AESGCM(key)))

    def seal(self, data: bytes) -> bytes:
        key_id, aead = self._keys[0]
        nonce = os.urandom(12)
        return _VERSION + key_id + nonce + aead.encrypt(nonce, data, None)

    def open(self, sealed: bytes) -> bytes:
        if sealed[:1] != _VERSION:
            raise ValueError("unknown sealed-envelope format")
        key_id, nonce, ciphertext = sealed[1:5], sealed[5:17], sealed[17:]
        for candidate_id, aead in self._keys:
            if candidate_id == key_id:
                return aead.decrypt(nonce, ciphertext, None)
        raise ValueError("sealed with a server secret that is no longer configured")
