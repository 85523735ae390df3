"""Apply Alembic migrations (core plus every feature's branch) on the app's engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from shipyard.core.db import Database
from shipyard.features import migration_dirs


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("version_locations", " ".join(str(p) for p in migration_dirs()))
    cfg.set_main_option("path_separator", "space")
    return cfg


async def upgrade(db: Database) -> None:
    """Bring the schema to the newest revision of every branch ("heads")."""

    def _run(sync_conn: Any) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, "heads")

    async with db.transaction() as conn:
        if db.dialect_name == "postgresql":
            # Several API processes may start at once; one migrates, the others wait.
            from sqlalchemy import text

            await conn.execute(text("SELECT pg_advisory_xact_lock(7242001)"))
        await conn.run_sync(_run)


async def pending(db: Database) -> list[str]:
    """Revisions not yet applied (empty when the schema is current)."""
    script = ScriptDirectory.from_config(alembic_config())

    def _current(sync_conn: Any) -> set[str]:
        if not inspect(sync_conn).has_table("alembic_version"):
            return set()
        return {row[0] for row in sync_conn.exec_driver_sql("SELECT version_num FROM alembic_version")}

    async with db.connect() as conn:
        current = await conn.run_sync(_current)
    heads = set(script.get_heads())
    if current == heads:
        return []
    applied: set[str] = set()
    for rev in current:
        applied.update(r.revision for r in script.iterate_revisions(rev, "base"))
    return [r.revision for r in script.walk_revisions() if r.revision not in applied]


def make_revision(database_url: str, branch: str, message: str) -> None:
    """Autogenerate a revision for one branch (``core`` or a feature name).

    A feature's tables are named ``<feature>_*``; core's tables have no feature prefix.
    The revision is written into that branch's own versions directory, so work on two
    features never edits the same migration chain.
    """
    import asyncio
    import importlib

    from shipyard.features import FEATURE_PACKAGES

    for name in FEATURE_PACKAGES:
        importlib.import_module(name + ".models")
    prefixes = [p.rsplit(".", 1)[-1] + "_" for p in FEATURE_PACKAGES]

    def owned(table_name: str) -> bool:
        if branch == "core":
            return not any(table_name.startswith(p) for p in prefixes)
        return table_name.startswith(branch + "_")

    def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        table = obj if type_ == "table" else getattr(obj, "table", None)
        table_name = name if type_ == "table" else getattr(table, "name", None)
        return table_name is None or owned(table_name)

    async def _go() -> None:
        db = Database(database_url)
        await upgrade(db)
        script = ScriptDirectory.from_config(alembic_config())
        heads = {h for h in script.get_heads()}
        branch_head = next((h for h in heads if branch in (script.get_revision(h).branch_labels or ())), None)
        versions = Path(__file__).parent / "migrations" / "versions"
        if branch != "core":
            versions = Path(importlib.import_module("shipyard." + branch).__file__).parent / "migrations"  # type: ignore[arg-type]
            versions.mkdir(exist_ok=True)

        def _run(sync_conn: Any) -> None:
            cfg = alembic_config()
            cfg.attributes["connection"] = sync_conn
            cfg.attributes["include_object"] = include_object
            kwargs: dict[str, Any] = {"version_path": str(versions)}
            if branch_head:
                kwargs["head"] = f"{branch}@head"
            else:
                kwargs.update(head="base", branch_label=branch, splice=True)
                if branch != "core":
                    kwargs["depends_on"] = "core@head"
            command.revision(cfg, message=message, autogenerate=True, **kwargs)

        async with db.transaction() as conn:
            await conn.run_sync(_run)
        await db.dispose()

    asyncio.run(_go())


if __name__ == "__main__":  # python -m shipyard.core.migrate BRANCH "message"
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        make_revision(f"sqlite:///{tmp}/rev.db", sys.argv[1], sys.argv[2])
