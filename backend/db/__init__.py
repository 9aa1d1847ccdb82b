"""Database layer: per-process async engine, typed models, and the Alembic migrations."""
