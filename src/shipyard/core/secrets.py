"""Rotation of the server secret: re-encrypt every stored secret under the current key.

Encrypted columns are found in the table metadata of core and every feature, by the
convention all of them follow: a text column named ``secret``, ``*_secret`` or ``*_enc``,
or one declared with ``info={"encrypted": True}``. Only values carrying the ``v1:`` prefix
of :class:`~shipyard.core.crypto.SecretBox` are touched; each is decrypted with any known
key (the current secret or one of ``previous_secret_keys``) and encrypted again with the
current one. The audit chain's MAC key is one of these stored values, so the chain keeps
verifying after a rotation. Nothing here logs or returns a plaintext.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field

from sqlalchemy import Column, String, Table, Text, select, tuple_, update

from shipyard.core.context import Context
from shipyard.core.crypto import PREFIX
from shipyard.core.models import metadata

_ENCRYPTED_NAME = re.compile(r"^(secret|.+_secret|.+_enc)$")
BATCH = 500


def _load_all_tables() -> None:
    from shipyard.features import FEATURE_PACKAGES

    for package in FEATURE_PACKAGES:
        importlib.import_module(package)
        try:
            importlib.import_module(f"{package}.models")
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.models":
                raise


def encrypted_columns() -> list[tuple[Table, Column[str]]]:
    """Every (table, column) that holds values encrypted with the server secret."""
    _load_all_tables()
    found = []
    for table in metadata.sorted_tables:
        for column in table.columns:
            if not isinstance(column.type, Text | String):
                continue
            if column.info.get("encrypted") or _ENCRYPTED_NAME.match(column.name):
                found.append((table, column))
    return found


@dataclass
class RotationReport:
    reencrypted: dict[str, int] = field(default_factory=dict)
    undecryptable: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.reencrypted.values())


async def rotate_all(ctx: Context) -> RotationReport:
    """Re-encrypt every stored secret under the current server secret."""
    report = RotationReport()
    for table, column in encrypted_columns():
        pk = list(table.primary_key.columns)
        if not pk:
            continue
        name = f"{table.name}.{column.name}"
        done = failed = 0
        last: tuple[object, ...] | None = None
        while True:
            # Keyset pagination over the primary key, one transaction per batch.
            query = select(*pk, column).where(column.like(PREFIX + "%")).order_by(*pk).limit(BATCH)
            if last is not None:
                query = query.where(tuple_(*pk) > tuple_(*last))
            async with ctx.db.transaction() as conn:
                rows = (await conn.execute(query)).all()
                for row in rows:
                    key = tuple(row[: len(pk)])
                    try:
                        value = ctx.box.rotate(row[len(pk)])
                    except ValueError:
                        failed += 1
                        continue
                    condition = [c == v for c, v in zip(pk, key, strict=True)]
                    await conn.execute(update(table).where(*condition).values({column.name: value}))
                    done += 1
            if len(rows) < BATCH:
                break
            last = tuple(rows[-1][: len(pk)])
        if done:
            report.reencrypted[name] = done
        if failed:
            report.undecryptable[name] = failed
    return report
