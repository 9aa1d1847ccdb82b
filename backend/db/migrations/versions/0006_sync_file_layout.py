"""the layout a sync's pre-pass found in a file, kept for the next sync of the same bytes

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('sync_files', schema=None) as batch_op:
        batch_op.add_column(sa.Column('layout', sa.JSON().with_variant(postgresql.JSONB(), 'postgresql'), nullable=True))


def downgrade() -> None:
    # A plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): batch mode's copy of the table
    # would drop ``sync_files`` while its errors and checkpoints point at it (foreign keys on).
    with op.batch_alter_table('sync_files', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('layout')
