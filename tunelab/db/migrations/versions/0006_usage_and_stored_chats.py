"""usage per service and hour, stored chats; chats leave the event log

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 10:30:00
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: Union[str, Sequence[str], None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "usage",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("service", sa.String(length=63), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("cancelled", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("ttft_ms", sa.JSON(), nullable=False),
        sa.Column("latency_ms", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_usage_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage")),
        sa.UniqueConstraint("workspace_id", "service", "hour", name=op.f("uq_usage_workspace_id")),
    )
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_usage_workspace_id"), ["workspace_id"])
        batch_op.create_index(batch_op.f("ix_usage_hour"), ["hour"])
    op.create_table(
        "stored_chats",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("service", sa.String(length=63), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("completion", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_stored_chats_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stored_chats")),
    )
    with op.batch_alter_table("stored_chats", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stored_chats_workspace_id"), ["workspace_id"])
        batch_op.create_index(batch_op.f("ix_stored_chats_service"), ["service"])
        batch_op.create_index(batch_op.f("ix_stored_chats_expires_at"), ["expires_at"])
    # Chats were events until now, with their whole text: they are traffic, not lifecycle.
    chats = "('chat.requested', 'chat.answered')"
    op.execute(f"DELETE FROM webhook_deliveries WHERE event_type IN {chats}")
    op.execute(f"DELETE FROM events WHERE type IN {chats}")


def downgrade() -> None:
    with op.batch_alter_table("stored_chats", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stored_chats_expires_at"))
        batch_op.drop_index(batch_op.f("ix_stored_chats_service"))
        batch_op.drop_index(batch_op.f("ix_stored_chats_workspace_id"))
    op.drop_table("stored_chats")
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usage_hour"))
        batch_op.drop_index(batch_op.f("ix_usage_workspace_id"))
    op.drop_table("usage")
