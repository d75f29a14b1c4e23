"""model servers, and services placed on them

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 13:20:00
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "model_servers",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("model_uri", sa.Text(), nullable=False),
        sa.Column("shared", sa.Boolean(), nullable=False),
        sa.Column("engine", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_servers")),
    )
    with op.batch_alter_table("model_servers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_servers_model_uri"), ["model_uri"])
    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.add_column(sa.Column("server_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_services_server_id"), ["server_id"])
        batch_op.create_foreign_key(
            batch_op.f("fk_services_server_id_model_servers"),
            "model_servers",
            ["server_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_services_server_id_model_servers"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_services_server_id"))
        batch_op.drop_column("ready_at")
        batch_op.drop_column("server_id")
    with op.batch_alter_table("model_servers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_servers_model_uri"))
    op.drop_table("model_servers")
