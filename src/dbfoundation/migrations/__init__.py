"""Migrations: Alembic under a migration lock, and a plain-SQL runner for projects without models."""
