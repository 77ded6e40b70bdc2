"""Alembic environment of the reference service (run by db.migrate(), dbf upgrade and plain alembic)."""

from examples.service.models import Base

from dbfoundation.migrations.alembic import run_migrations

run_migrations(Base.metadata)
