"""PostgreSQL access: the connection pool, migrations and the named SQL statements."""
