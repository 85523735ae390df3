"""Alembic environment. Migrations always run on a connection handed in by
:func:`shipyard.core.migrate.upgrade`, so one async engine serves both engines."""

from __future__ import annotations

from alembic import context

import shipyard.core.models  # noqa: F401  (registers core tables)
from shipyard.core.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `shipyard migrate`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    include_object=context.config.attributes.get("include_object"),
)
with context.begin_transaction():
    context.run_migrations()
