"""Secrets at rest: provider credentials, signing keys and webhook secrets are stored
encrypted with a key derived from the server secret.

Ciphertexts are Fernet tokens (AES-128-CBC + HMAC-SHA256) prefixed with ``v1:``. Keys
derived from ``previous_secret_keys`` still decrypt, so the server secret can be
rotated: ``shipyard secrets rotate`` re-encrypts every stored value under the new key
(see :mod:`shipyard.core.secrets`, which finds encrypted columns by name: ``secret``,
``*_secret`` or ``*_enc``, or ``info={"encrypted": True}`` on the column).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.db import insert_ignore, utcnow
from shipyard.core.models import server_keys

if TYPE_CHECKING:
    from shipyard.core.context import Context

PREFIX = "v1:"


def derive_key(server_secret: str, purpose: str) -> bytes:
    """A 32-byte key for one purpose, so one leaked derived key exposes nothing else."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"shipyard", info=purpose.encode()).derive(
        server_secret.encode()
    )


class SecretBox:
    def __init__(self, current_secret: str, previous_secrets: list[str] | None = None) -> None:
        keys = [current_secret, *(previous_secrets or [])]
        self._fernet = MultiFernet([Fernet(base64.urlsafe_b64encode(derive_key(k, "secrets-at-rest"))) for k in keys])

    def encrypt(self, plaintext: str) -> str:
        return PREFIX + self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        if not ciphertext.startswith(PREFIX):
            raise ValueError("not an encrypted value")
        try:
            return self._fernet.decrypt(ciphertext[len(PREFIX) :].encode()).decode()
        except InvalidToken as exc:
            raise ValueError("stored secret cannot be decrypted with the configured keys") from exc

    def rotate(self, ciphertext: str) -> str:
        """Re-encrypt under the current key (decrypting with any known key)."""
        if not ciphertext.startswith(PREFIX):
            raise ValueError("not an encrypted value")
        try:
            return PREFIX + self._fernet.rotate(ciphertext[len(PREFIX) :].encode()).decode()
        except InvalidToken as exc:
            raise ValueError("stored secret cannot be decrypted with the configured keys") from exc


def sha256_hex(value: str | bytes) -> str:
    data = value.encode() if isinstance(value, str) else value
    return hashlib.sha256(data).hexdigest()


async def stored_server_key(
    conn: AsyncConnection, ctx: Context, name: str, initial: Callable[[], bytes] | None = None
) -> bytes:
    """A named server-wide key (HMAC keys for the audit chain, signed links…).

    Kept in ``server_keys`` encrypted with the server secret, so it survives a rotation of
    that secret (``shipyard secrets rotate`` only re-encrypts it) and every process of a
    deployment shares it. Created on first use, from ``initial`` or 32 random bytes; two
    processes racing to create it agree on the first one written.
    """
    cache: dict[str, bytes] = ctx.extras.setdefault("server_keys", {})
    if name in cache:
        return cache[name]
    query = select(server_keys.c.value).where(server_keys.c.name == name)
    stored = (await conn.execute(query)).scalar()
    if stored is None:
        value = initial() if initial is not None else secrets.token_bytes(32)
        row = {"name": name, "value": ctx.box.encrypt(base64.b64encode(value).decode()), "created_at": utcnow()}
        await conn.execute(insert_ignore(conn, server_keys, row, conflict_columns=["name"]))
        stored = (await conn.execute(query)).scalar_one()
    key = cache[name] = base64.b64decode(ctx.box.decrypt(stored))
    return key
