"""Alembic environment: migrations are raw SQL run through SQLAlchemy's psycopg driver."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from inferbatch.db.connector import sqlalchemy_url

config = context.config
url = config.get_main_option("sqlalchemy.url")
if url is None:
    raise RuntimeError("sqlalchemy.url is not set")

engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
