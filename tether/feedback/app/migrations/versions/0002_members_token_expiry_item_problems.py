"""Project membership, API token expiry, and items the queue passes over.

- ``project_members``: annotators and judges see only their projects. Every existing non-admin
  user becomes a member of every existing project, so nobody loses access on upgrade.
- ``api_tokens.expires_at``: existing tokens expire 90 days after the upgrade.
- ``items.problem``: set when the queue finds an item it cannot serve.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

EXISTING_TOKEN_DAYS = 90


def upgrade() -> None:
    op.create_table(
        "project_members",
        sa.Column("project_id", sa.Integer(), sa.ForeignKey("projects.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"),
                  primary_key=True, index=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    now = datetime.now(timezone.utc)
    op.execute(sa.text(
        "INSERT INTO project_members (project_id, user_id, created_at) "
        "SELECT projects.id, users.id, :now FROM projects CROSS JOIN users "
        "WHERE users.role != 'admin'").bindparams(now=now))

    with op.batch_alter_table("api_tokens") as table:
        table.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(sa.text("UPDATE api_tokens SET expires_at = :at").bindparams(
        at=now + timedelta(days=EXISTING_TOKEN_DAYS)))
    with op.batch_alter_table("api_tokens") as table:
        table.alter_column("expires_at", existing_type=sa.DateTime(timezone=True),
                           nullable=False)

    with op.batch_alter_table("items") as table:
        table.add_column(sa.Column("problem", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("items") as table:
        table.drop_column("problem")
    with op.batch_alter_table("api_tokens") as table:
        table.drop_column("expires_at")
    op.drop_table("project_members")
