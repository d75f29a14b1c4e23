"""fine-tuning jobs may wait for their files' checks before their experiment exists

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 02:30:00
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: Union[str, Sequence[str], None] = "0011"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.alter_column("experiment_id", existing_type=sa.String(length=32), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM fine_tuning_jobs WHERE experiment_id IS NULL")
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.alter_column("experiment_id", existing_type=sa.String(length=32), nullable=False)
