"""analytics sessions rollup per day

Revision ID: analytics_0002
Revises: analytics_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shipyard.core.db

revision = 'analytics_0002'
down_revision = 'analytics_0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('analytics_session_days',
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Integer(), nullable=False),
    sa.Column('stale', sa.Boolean(), nullable=False),
    sa.Column('timeout_ms', sa.BigInteger(), nullable=True),
    sa.Column('sessions', sa.BigInteger(), nullable=False),
    sa.Column('duration_ms', sa.BigInteger(), nullable=False),
    sa.Column('events', sa.BigInteger(), nullable=False),
    sa.Column('screens', sa.BigInteger(), nullable=False),
    sa.Column('bounces', sa.BigInteger(), nullable=False),
    sa.Column('last_end_ms', sa.BigInteger(), nullable=True),
    sa.Column('updated_at', shipyard.core.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('project_id', 'day', name=op.f('pk_analytics_session_days'))
    )
    # Days already folded into the other rollups: the next rollup run computes their sessions.
    op.execute(
        "INSERT INTO analytics_session_days (project_id, day, stale, sessions, duration_ms, events, screens,"
        " bounces, updated_at)"
        " SELECT project_id, ts_ms / 86400000, true, 0, 0, 0, 0, 0, CURRENT_TIMESTAMP FROM analytics_events"
        " WHERE id <= (SELECT COALESCE(MAX(last_event_id), 0) FROM analytics_rollup_state WHERE name = 'events')"
        " GROUP BY project_id, ts_ms / 86400000"
    )


def downgrade() -> None:
    op.drop_table('analytics_session_days')
