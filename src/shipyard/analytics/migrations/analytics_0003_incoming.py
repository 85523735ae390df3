"""analytics landing table

Revision ID: analytics_0003
Revises: analytics_0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql, sqlite

revision = 'analytics_0003'
down_revision = 'analytics_0002'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql').with_variant(sqlite.JSON(), 'sqlite')


def upgrade() -> None:
    op.create_table('analytics_incoming',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('message_id', sa.String(length=100), nullable=False),
    sa.Column('type', sa.String(length=10), nullable=False),
    sa.Column('event', sa.String(length=200), nullable=False),
    sa.Column('screen', sa.String(length=200), nullable=True),
    sa.Column('user_key', sa.String(length=200), nullable=False),
    sa.Column('user_id', sa.String(length=200), nullable=True),
    sa.Column('anonymous_id', sa.String(length=200), nullable=True),
    sa.Column('ts_ms', sa.BigInteger(), nullable=False),
    sa.Column('received_ms', sa.BigInteger(), nullable=False),
    sa.Column('session_id', sa.String(length=100), nullable=True),
    sa.Column('properties', JSON, nullable=True),
    sa.Column('context', JSON, nullable=True),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_analytics_incoming')),
    sqlite_autoincrement=True
    )


def downgrade() -> None:
    op.drop_table('analytics_incoming')
