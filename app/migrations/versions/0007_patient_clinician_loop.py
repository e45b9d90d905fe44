"""Patient-clinician loop: shared goals, goal logs, versioned care plans, visits, messages.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 19:08:18.585313
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Care plan versions are the plan's history: the database refuses to change or remove them
# (the trigger function `clinaiops_append_only` is from 0001).
APPEND_ONLY = ("care_plan_versions",)


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
    op.create_table('care_plan_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=36), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('content', sa.JSON(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('note', sa.String(length=2000), nullable=False),
    sa.Column('change_reason', sa.String(length=500), nullable=False),
    sa.Column('created_by', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], ),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('patient_id', 'version', name='uq_care_plan_versions_patient_version')
    )
    op.create_table('goals',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('patient_id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('target_value', sa.Float(), nullable=True),
    sa.Column('target_systolic', sa.Float(), nullable=True),
    sa.Column('target_diastolic', sa.Float(), nullable=True),
    sa.Column('note', sa.String(length=1000), nullable=False),
    sa.Column('proposed_by', sa.Integer(), nullable=False),
    sa.Column('proposed_by_role', sa.String(length=16), nullable=False),
    sa.Column('proposed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('patient_agreed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('clinician_agreed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('clinician_agreed_by', sa.Integer(), nullable=True),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('closed_by', sa.Integer(), nullable=True),
    sa.Column('close_reason', sa.String(length=500), nullable=False),
    sa.Column('supersedes_id', sa.String(length=36), nullable=True),
    sa.ForeignKeyConstraint(['clinician_agreed_by'], ['users.id'], ),
    sa.ForeignKeyConstraint(['closed_by'], ['users.id'], ),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], ),
    sa.ForeignKeyConstraint(['proposed_by'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('goals', schema=None) as batch_op:
        batch_op.create_index('ix_goals_patient_status', ['patient_id', 'status'], unique=False)

    op.create_table('message_threads',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('patient_id', sa.String(length=36), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('is_question', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_by', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], ),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('message_threads', schema=None) as batch_op:
        batch_op.create_index('ix_message_threads_patient_last', ['patient_id', 'last_message_at'], unique=False)

    op.create_table('visits',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('patient_id', sa.String(length=36), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('due_by', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reasons', sa.JSON(), nullable=False),
    sa.Column('rule_kind', sa.String(length=16), nullable=False),
    sa.Column('rule_due_by', sa.DateTime(timezone=True), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('override_due_by', sa.DateTime(timezone=True), nullable=True),
    sa.Column('override_kind', sa.String(length=16), nullable=True),
    sa.Column('override_reason', sa.String(length=1000), nullable=False),
    sa.Column('overridden_by', sa.Integer(), nullable=True),
    sa.Column('overridden_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_by', sa.Integer(), nullable=True),
    sa.Column('outcome_note', sa.String(length=2000), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['completed_by'], ['users.id'], ),
    sa.ForeignKeyConstraint(['overridden_by'], ['users.id'], ),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('visits', schema=None) as batch_op:
        batch_op.create_index('ix_visits_status_due_by', ['status', 'due_by'], unique=False)
        batch_op.create_index('uq_visits_due_patient', ['patient_id'], unique=True, sqlite_where=sa.text("status = 'due'"), postgresql_where=sa.text("status = 'due'"))

    op.create_table('goal_logs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('goal_id', sa.String(length=36), nullable=False),
    sa.Column('patient_id', sa.String(length=36), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('logged_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['goal_id'], ['goals.id'], ),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('goal_id', 'day', name='uq_goal_logs_goal_day')
    )
    with op.batch_alter_table('goal_logs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_goal_logs_patient_id'), ['patient_id'], unique=False)

    op.create_table('messages',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('thread_id', sa.String(length=36), nullable=False),
    sa.Column('patient_id', sa.String(length=36), nullable=False),
    sa.Column('sender_id', sa.Integer(), nullable=False),
    sa.Column('sender_side', sa.String(length=16), nullable=False),
    sa.Column('body', sa.String(length=5000), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('read_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('read_by', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], ),
    sa.ForeignKeyConstraint(['read_by'], ['users.id'], ),
    sa.ForeignKeyConstraint(['sender_id'], ['users.id'], ),
    sa.ForeignKeyConstraint(['thread_id'], ['message_threads.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_messages_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index('ix_messages_thread_sent', ['thread_id', 'sent_at'], unique=False)

    _append_only_up()


def downgrade() -> None:
    # Dropping a table drops its triggers too (SQLite and PostgreSQL).
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_thread_sent')
        batch_op.drop_index(batch_op.f('ix_messages_patient_id'))

    op.drop_table('messages')
    with op.batch_alter_table('goal_logs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_goal_logs_patient_id'))

    op.drop_table('goal_logs')
    with op.batch_alter_table('visits', schema=None) as batch_op:
        batch_op.drop_index('uq_visits_due_patient', sqlite_where=sa.text("status = 'due'"), postgresql_where=sa.text("status = 'due'"))
        batch_op.drop_index('ix_visits_status_due_by')

    op.drop_table('visits')
    with op.batch_alter_table('message_threads', schema=None) as batch_op:
        batch_op.drop_index('ix_message_threads_patient_last')

    op.drop_table('message_threads')
    with op.batch_alter_table('goals', schema=None) as batch_op:
        batch_op.drop_index('ix_goals_patient_status')

    op.drop_table('goals')
    op.drop_table('care_plan_versions')
