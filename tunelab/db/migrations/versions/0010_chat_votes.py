"""chat votes: which answer of a stored comparison a person found best

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 18:30:00
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: Union[str, Sequence[str], None] = "0009"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "chat_votes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("best", sa.String(length=63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_chat_votes_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_votes")),
    )
    with op.batch_alter_table("chat_votes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_chat_votes_workspace_id"), ["workspace_id"])
        batch_op.create_index(batch_op.f("ix_chat_votes_created_at"), ["created_at"])


def downgrade() -> None:
    op.drop_table("chat_votes")
