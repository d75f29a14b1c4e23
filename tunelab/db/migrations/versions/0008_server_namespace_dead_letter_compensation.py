"""model servers know their namespace; dead letters know whether they were compensated

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 14:00:00
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: Union[str, Sequence[str], None] = "0007"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("model_servers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("namespace", sa.String(length=63), nullable=False, server_default="default")
        )
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("compensated_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_column("compensated_at")
    with op.batch_alter_table("model_servers", schema=None) as batch_op:
        batch_op.drop_column("namespace")
