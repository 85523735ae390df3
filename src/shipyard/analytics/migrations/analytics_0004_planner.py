"""analytics: plans that hold without statistics, and cheaper statistics

Revision ID: analytics_0004
Revises: analytics_0003

The alias index leads with ``user_key``. Led by ``project_id`` it matched the project part
of an alias lookup as well as the primary key did, and on a table PostgreSQL had not yet
analyzed the planner picked it and filtered every alias of the project for each key
(1.4 s for one group commit's lookups, measured). Every query that uses it also fixes
``user_key``, so the new order serves them all and leaves alias lookups to the key.

ANALYZE of ``analytics_events`` spent most of its time (≈1 s at 100,000 rows on the 2-core
box) sorting sampled ``properties`` and ``context`` documents to build statistics no plan
uses: property filters compare extracted values, which have no column statistics anyway.
PostgreSQL only; SQLite gathers no statistics unless asked.
"""

from __future__ import annotations

from alembic import op

revision = 'analytics_0004'
down_revision = 'analytics_0003'
branch_labels = None
depends_on = None

TABLES = ('analytics_events', 'analytics_incoming')
COLUMNS = ('properties', 'context')


def _set_statistics(target: int) -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table in TABLES:
        changes = ', '.join(f'ALTER COLUMN {column} SET STATISTICS {target}' for column in COLUMNS)
        op.execute(f'ALTER TABLE {table} {changes}')


def upgrade() -> None:
    op.drop_index('ix_analytics_aliases_user', table_name='analytics_aliases')
    op.create_index('ix_analytics_aliases_user', 'analytics_aliases', ['user_key', 'project_id'])
    _set_statistics(0)


def downgrade() -> None:
    _set_statistics(-1)  # back to default_statistics_target
    op.drop_index('ix_analytics_aliases_user', table_name='analytics_aliases')
    op.create_index('ix_analytics_aliases_user', 'analytics_aliases', ['project_id', 'user_key'])
