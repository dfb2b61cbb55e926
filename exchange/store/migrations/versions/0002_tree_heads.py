"""signed tree heads of the exchange log

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tree_heads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.LargeBinary(), nullable=False),
        sa.Column("hub_time_us", sa.BigInteger(), nullable=False),
        sa.Column("signed", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("tree_heads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tree_heads_size"), ["size"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tree_heads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tree_heads_size"))
    op.drop_table("tree_heads")
