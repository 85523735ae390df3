"""Tamper-evident audit trail.

Every record stores ``hash = HMAC(chain key, prev_hash ‖ canonical record)`` and the
hash of the record before it, in a gap-free sequence. Changing, deleting, inserting or
reordering a record breaks the chain at that point; :func:`verify` names the first
broken record. Signed Ed25519 checkpoints of the chain head additionally catch a
truncated tail and let a third party verify the head without the server secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import desc, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.context import Context
from shipyard.core.crypto import derive_key, stored_server_key
from shipyard.core.db import insert_ignore, utcnow
from shipyard.core.models import audit_checkpoints, audit_log, server_keys

GENESIS = "0" * 64
_SECRET_NAMES = re.compile(r"pass(word)?|secret|token|api[_-]?key|authorization|cookie|private|credential", re.I)


@dataclass(frozen=True)
class Actor:
    """Who did something, and from where."""

    type: str  # user | key | system
    id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    label: str | None = None  # e.g. the user's email, for display

    @classmethod
    def system(cls, component: str = "shipyard") -> Actor:
        return cls(type="system", id=component)


def scrub_details(value: Any) -> Any:
    """Drop values whose key names a secret, so audit records never hold one."""
    if isinstance(value, dict):
        return {k: ("[redacted]" if _SECRET_NAMES.search(str(k)) else scrub_details(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_details(v) for v in value]
    return value


def _canonical(row: dict[str, Any]) -> bytes:
    fields = {
        "seq": row["seq"],
        "ts": row["ts"].isoformat(),
        "project_id": row["project_id"],
        "actor_type": row["actor_type"],
        "actor_id": row["actor_id"],
        "action": row["action"],
        "resource_type": row["resource_type"],
        "resource_id": row["resource_id"],
        "outcome": row["outcome"],
        "ip": row["ip"],
        "user_agent": row["user_agent"],
        "request_id": row["request_id"],
        "details": row["details"],
    }
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)


MAC_KEY_NAME = "audit-mac"


async def mac_key(conn: AsyncConnection, ctx: Context) -> bytes:
    """The chain's HMAC key, kept by :func:`stored_server_key` so the whole chain verifies
    across rotations of the server secret without keeping old secrets configured.

    It starts as the key derived from the server secret, so chains written before it was
    stored keep verifying.
    """
    return await stored_server_key(
        conn, ctx, MAC_KEY_NAME, initial=lambda: derive_key(ctx.settings.resolved_secret_key, "mac")
    )


def _chain_hash(key: bytes, prev_hash: str, row: dict[str, Any]) -> str:
    return hmac.new(key, prev_hash.encode() + b"|" + _canonical(row), hashlib.sha256).hexdigest()


async def record(
    conn: AsyncConnection,
    ctx: Context,
    actor: Actor,
    action: str,
    *,
    project_id: int | None = None,
    resource_type: str | None = None,
    resource_id: str | int | None = None,
    outcome: str = "success",
    details: dict[str, Any] | None = None,
) -> int:
    """Append one record inside the caller's transaction; returns its sequence number."""
    if conn.dialect.name == "postgresql":
        # Serialise appends across processes so the chain never forks.
        await conn.execute(text("SELECT pg_advisory_xact_lock(7242002)"))
    head = (
        await conn.execute(select(audit_log.c.seq, audit_log.c.hash).order_by(desc(audit_log.c.seq)).limit(1))
    ).first()
    seq, prev_hash = (head.seq + 1, head.hash) if head else (1, GENESIS)
    row: dict[str, Any] = {
        "seq": seq,
        "ts": utcnow(),
        "project_id": project_id,
        "actor_type": actor.type,
        "actor_id": actor.label or actor.id,
        "action": action,
        "resource_type": resource_type,
        "resource_id": None if resource_id is None else str(resource_id),
        "outcome": outcome,
        "ip": actor.ip,
        "user_agent": (actor.user_agent or None) and actor.user_agent[:400],
        "request_id": actor.request_id,
        "details": scrub_details(details or {}),
    }
    row["prev_hash"] = prev_hash
    row["hash"] = _chain_hash(await mac_key(conn, ctx), prev_hash, row)
    await conn.execute(audit_log.insert().values(row))
    return seq


@dataclass
class VerifyResult:
    ok: bool
    records: int
    first_bad_seq: int | None = None
    problem: str | None = None
    checkpoints_checked: int = 0
    notes: list[str] = field(default_factory=list)


async def verify(ctx: Context) -> VerifyResult:
    """Walk the whole chain and the checkpoints; report the first record that fails."""
    count = 0
    expected_seq = 1
    prev_hash = GENESIS
    hashes: dict[int, str] = {}
    async with ctx.db.transaction() as conn:
        key = await mac_key(conn, ctx)
    async with ctx.db.connect() as conn:
        result = await conn.stream(select(audit_log).order_by(audit_log.c.id))
        async for r in result:
            row = dict(r._mapping)
            count += 1
            if row["seq"] != expected_seq:
                what = "deleted" if row["seq"] > expected_seq else "reordered or inserted"
                return VerifyResult(
                    False,
                    count,
                    row["seq"],
                    f"record seq {row['seq']} found where seq {expected_seq} was expected: a record was {what}",
                )
            if row["prev_hash"] != prev_hash:
                return VerifyResult(
                    False,
                    count,
                    row["seq"],
                    f"record seq {row['seq']} does not link to the record before it: "
                    "a record was deleted, inserted or reordered",
                )
            if _chain_hash(key, prev_hash, row) != row["hash"]:
                return VerifyResult(False, count, row["seq"], f"record seq {row['seq']} was modified")
            hashes[row["seq"]] = row["hash"]
            prev_hash = row["hash"]
            expected_seq += 1
        checkpoints = (await conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.seq))).all()
    for cp in checkpoints:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(cp.public_key))
        try:
            public.verify(base64.b64decode(cp.signature), f"{cp.seq}:{cp.head_hash}".encode())
        except Exception:
            return VerifyResult(False, count, cp.seq, f"checkpoint at seq {cp.seq} has a bad signature")
        if hashes.get(cp.seq) != cp.head_hash:
            return VerifyResult(
                False,
                count,
                cp.seq,
                f"checkpoint at seq {cp.seq} no longer matches the chain: records up to it were removed or changed",
            )
    return VerifyResult(True, count, checkpoints_checked=len(checkpoints))


async def _signing_key(ctx: Context) -> Ed25519PrivateKey:
    async with ctx.db.transaction() as conn:
        stored = (await conn.execute(select(server_keys.c.value).where(server_keys.c.name == "audit-ed25519"))).scalar()
        if stored is None:
            raw = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            await conn.execute(
                insert_ignore(
                    conn,
                    server_keys,
                    {
                        "name": "audit-ed25519",
                        "value": ctx.box.encrypt(base64.b64encode(raw).decode()),
                        "created_at": utcnow(),
                    },
                    conflict_columns=["name"],
                )
            )
            stored = (
                await conn.execute(select(server_keys.c.value).where(server_keys.c.name == "audit-ed25519"))
            ).scalar_one()
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(ctx.box.decrypt(stored)))


async def checkpoint(ctx: Context) -> dict[str, Any] | None:
    """Sign the current chain head; returns the checkpoint (None for an empty chain)."""
    key = await _signing_key(ctx)
    public = base64.b64encode(
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
    async with ctx.db.transaction() as conn:
        head = (
            await conn.execute(select(audit_log.c.seq, audit_log.c.hash).order_by(desc(audit_log.c.seq)).limit(1))
        ).first()
        if head is None:
            return None
        signature = base64.b64encode(key.sign(f"{head.seq}:{head.hash}".encode())).decode()
        cp = {
            "seq": head.seq,
            "head_hash": head.hash,
            "created_at": utcnow(),
            "signature": signature,
            "public_key": public,
        }
        await conn.execute(audit_checkpoints.insert().values(cp))
    return cp


def as_dict(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    for k, v in out.items():
        if isinstance(v, datetime):
            out[k] = v.isoformat()
    return out
