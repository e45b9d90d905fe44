"""Drift reports: each monitoring run's window, findings and Evidently files.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 19:05:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('drift_reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('headline', sa.String(length=1000), nullable=False),
    sa.Column('model_version', sa.String(length=64), nullable=True),
    sa.Column('reference', sa.String(length=100), nullable=False),
    sa.Column('feature_set', sa.String(length=64), nullable=False),
    sa.Column('reference_rows', sa.Integer(), nullable=False),
    sa.Column('current_rows', sa.Integer(), nullable=False),
    sa.Column('drifted_features', sa.Integer(), nullable=False),
    sa.Column('summary', sa.JSON(), nullable=False),
    sa.Column('html_path', sa.String(length=300), nullable=True),
    sa.Column('html_sha256', sa.String(length=64), nullable=True),
    sa.Column('json_path', sa.String(length=300), nullable=True),
    sa.Column('json_sha256', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_drift_reports_created', 'drift_reports', ['created_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_drift_reports_created', table_name='drift_reports')
    op.drop_table('drift_reports')
