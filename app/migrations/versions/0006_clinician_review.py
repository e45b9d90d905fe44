"""Clinician review: claims on queued proposals, signed decisions, manual alert escalations.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 17:58:19.384420
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Signed decisions and escalations are evidence: the database refuses to change or remove
# them, like the audit log (the trigger function `clinaiops_append_only` is from 0001).
APPEND_ONLY = ("decisions", "alert_escalations")


def _append_only_up() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in APPEND_ONLY:
        if postgres:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION clinaiops_append_only()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION clinaiops_append_only()"
            )
        else:
            for op_name in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{op_name.lower()} BEFORE {op_name} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {op_name} refused'); END"
                )


def upgrade() -> None:
    op.create_table('alert_escalations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('alert_id', sa.String(length=36), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('note', sa.String(length=1000), nullable=False),
    sa.Column('level', sa.Integer(), nullable=False),
    sa.Column('escalated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['alert_id'], ['alerts.id'], ),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('alert_escalations', schema=None) as batch_op:
        batch_op.create_index('ix_alert_escalations_alert', ['alert_id', 'escalated_at'], unique=False)

    op.create_table('decisions',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('proposal_id', sa.String(length=36), nullable=False),
    sa.Column('patient_id', sa.String(length=36), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('from_step', sa.Integer(), nullable=False),
    sa.Column('proposed_step', sa.Integer(), nullable=False),
    sa.Column('decided_step', sa.Integer(), nullable=False),
    sa.Column('from_dose', sa.Float(), nullable=False),
    sa.Column('proposed_dose', sa.Float(), nullable=False),
    sa.Column('decided_dose', sa.Float(), nullable=False),
    sa.Column('reason_code', sa.String(length=32), nullable=True),
    sa.Column('reason_text', sa.String(length=2000), nullable=False),
    sa.Column('feature_hash', sa.String(length=64), nullable=False),
    sa.Column('features', sa.JSON(), nullable=False),
    sa.Column('model_version', sa.String(length=64), nullable=False),
    sa.Column('proposal_action', sa.String(length=16), nullable=False),
    sa.Column('probabilities', sa.JSON(), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=False),
    sa.Column('label_action', sa.String(length=16), nullable=False),
    sa.Column('signer_user_id', sa.Integer(), nullable=False),
    sa.Column('signer_printed_name', sa.String(length=200), nullable=False),
    sa.Column('signer_username', sa.String(length=64), nullable=False),
    sa.Column('meaning', sa.String(length=64), nullable=False),
    sa.Column('signed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('record_hash', sa.String(length=64), nullable=False),
    sa.Column('signature', sa.String(length=128), nullable=False),
    sa.Column('key_id', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], ),
    sa.ForeignKeyConstraint(['proposal_id'], ['proposals.id'], ),
    sa.ForeignKeyConstraint(['signer_user_id'], ['users.id'], ),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('proposal_id', name='uq_decisions_proposal')
    )
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.create_index('ix_decisions_patient_signed', ['patient_id', 'signed_at'], unique=False)

    op.create_table('review_claims',
    sa.Column('proposal_id', sa.String(length=36), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['proposal_id'], ['proposals.id'], ),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('proposal_id')
    )
    _append_only_up()


def downgrade() -> None:
    # Dropping a table drops its triggers too (SQLite and PostgreSQL).
    op.drop_table('review_claims')
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.drop_index('ix_decisions_patient_signed')

    op.drop_table('decisions')
    with op.batch_alter_table('alert_escalations', schema=None) as batch_op:
        batch_op.drop_index('ix_alert_escalations_alert')

    op.drop_table('alert_escalations')
