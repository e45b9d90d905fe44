"""Model lifecycle: training snapshots, privacy ledger, transitions and aliases, sign-offs,
gate results, rollouts and their steps, shadow predictions; evaluations.model_ms.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 19:19:19.384295
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# The ledger, the lifecycle history, sign-offs and gate evidence are the change-control
# record: the database refuses to change or remove them (`clinaiops_append_only` is from 0001).
APPEND_ONLY = ("privacy_ledger", "model_transitions", "model_signoffs", "gate_results")


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
    op.create_table('gate_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('gate', sa.String(length=64), nullable=False),
    sa.Column('passed', sa.Boolean(), nullable=False),
    sa.Column('champion_version', sa.Integer(), nullable=True),
    sa.Column('measured', sa.JSON(), nullable=False),
    sa.Column('threshold', sa.JSON(), nullable=False),
    sa.Column('detail', sa.String(length=2000), nullable=False),
    sa.Column('evidence_path', sa.String(length=300), nullable=True),
    sa.Column('evidence_sha256', sa.String(length=64), nullable=True),
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('gate_results', schema=None) as batch_op:
        batch_op.create_index('ix_gate_results_model', ['model_name', 'version', 'created_at'], unique=False)

    op.create_table('model_aliases',
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('alias', sa.String(length=32), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('updated_by', sa.String(length=100), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('model_name', 'alias')
    )
    op.create_table('model_transitions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('from_status', sa.String(length=16), nullable=True),
    sa.Column('to_status', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=100), nullable=False),
    sa.Column('reason', sa.String(length=1000), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('model_transitions', schema=None) as batch_op:
        batch_op.create_index('ix_model_transitions_model', ['model_name', 'version', 'at'], unique=False)

    op.create_table('rollouts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('challenger_version', sa.Integer(), nullable=False),
    sa.Column('champion_version', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('percent', sa.Integer(), nullable=False),
    sa.Column('step_started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('dwell_seconds', sa.Integer(), nullable=False),
    sa.Column('salt', sa.String(length=32), nullable=False),
    sa.Column('started_by', sa.String(length=100), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('end_reason', sa.String(length=1000), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.create_index('ix_rollouts_model_status', ['model_name', 'status'], unique=False)

    op.create_table('training_snapshots',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('cohort', sa.String(length=64), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('feature_set', sa.String(length=64), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('patients', sa.Integer(), nullable=False),
    sa.Column('train_patients', sa.Integer(), nullable=False),
    sa.Column('holdout_patients', sa.Integer(), nullable=False),
    sa.Column('label_counts', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('checks', sa.JSON(), nullable=False),
    sa.Column('path', sa.String(length=300), nullable=False),
    sa.Column('file_sha256', sa.String(length=64), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('content_hash')
    )
    op.create_table('privacy_ledger',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('cohort', sa.String(length=64), nullable=False),
    sa.Column('snapshot_id', sa.Integer(), nullable=True),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('model_version', sa.Integer(), nullable=True),
    sa.Column('epsilon', sa.Float(), nullable=False),
    sa.Column('delta', sa.Float(), nullable=False),
    sa.Column('accountant', sa.String(length=16), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['snapshot_id'], ['training_snapshots.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('privacy_ledger', schema=None) as batch_op:
        batch_op.create_index('ix_privacy_ledger_cohort', ['cohort'], unique=False)

    op.create_table('rollout_steps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sa.Integer(), nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=False),
    sa.Column('percent', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('analysed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('analysis', sa.JSON(), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('reasons', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('rollout_steps', schema=None) as batch_op:
        batch_op.create_index('ix_rollout_steps_rollout', ['rollout_id'], unique=False)

    op.create_table('shadow_predictions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('rollout_id', sa.Integer(), nullable=False),
    sa.Column('evaluation_id', sa.Integer(), nullable=True),
    sa.Column('patient_id', sa.String(length=36), nullable=False),
    sa.Column('challenger_version', sa.Integer(), nullable=False),
    sa.Column('champion_action', sa.String(length=16), nullable=True),
    sa.Column('challenger_action', sa.String(length=16), nullable=True),
    sa.Column('challenger_route', sa.String(length=32), nullable=True),
    sa.Column('probabilities', sa.JSON(), nullable=False),
    sa.Column('latency_ms', sa.Float(), nullable=True),
    sa.Column('error', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], ),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('shadow_predictions', schema=None) as batch_op:
        batch_op.create_index('ix_shadow_predictions_rollout', ['rollout_id', 'created_at'], unique=False)

    op.create_table('model_signoffs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('signoff_role', sa.String(length=16), nullable=False),
    sa.Column('signer_id', sa.Integer(), nullable=False),
    sa.Column('signer_name', sa.String(length=200), nullable=False),
    sa.Column('meaning', sa.String(length=300), nullable=False),
    sa.Column('note', sa.String(length=1000), nullable=False),
    sa.Column('record_sha256', sa.String(length=64), nullable=False),
    sa.Column('signature', sa.String(length=200), nullable=False),
    sa.Column('signed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['signer_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('model_name', 'version', 'signer_id', name='uq_model_signoffs_signer'),
    sa.UniqueConstraint('model_name', 'version', 'signoff_role', name='uq_model_signoffs_role')
    )
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('model_ms', sa.Float(), nullable=True))

    _append_only_up()


def downgrade() -> None:
    # Dropping a table drops its triggers too (SQLite and PostgreSQL).
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_column('model_ms')

    op.drop_table('model_signoffs')
    with op.batch_alter_table('shadow_predictions', schema=None) as batch_op:
        batch_op.drop_index('ix_shadow_predictions_rollout')

    op.drop_table('shadow_predictions')
    with op.batch_alter_table('rollout_steps', schema=None) as batch_op:
        batch_op.drop_index('ix_rollout_steps_rollout')

    op.drop_table('rollout_steps')
    with op.batch_alter_table('privacy_ledger', schema=None) as batch_op:
        batch_op.drop_index('ix_privacy_ledger_cohort')

    op.drop_table('privacy_ledger')
    op.drop_table('training_snapshots')
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.drop_index('ix_rollouts_model_status')

    op.drop_table('rollouts')
    with op.batch_alter_table('model_transitions', schema=None) as batch_op:
        batch_op.drop_index('ix_model_transitions_model')

    op.drop_table('model_transitions')
    op.drop_table('model_aliases')
    with op.batch_alter_table('gate_results', schema=None) as batch_op:
        batch_op.drop_index('ix_gate_results_model')

    op.drop_table('gate_results')
