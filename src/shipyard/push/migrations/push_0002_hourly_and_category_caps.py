"""push: hourly caps (user, category) and per-user caps per category

Revision ID: push_0002
Revises: push_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shipyard.core.db

revision = "push_0002"
down_revision = "push_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("push_users") as batch:
        batch.add_column(sa.Column("hourly_cap", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("category_caps", shipyard.core.db.Json, nullable=True))
    with op.batch_alter_table("push_categories") as batch:
        batch.add_column(sa.Column("hourly_cap", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("push_categories") as batch:
        batch.drop_column("hourly_cap")
    with op.batch_alter_table("push_users") as batch:
        batch.drop_column("category_caps")
        batch.drop_column("hourly_cap")
