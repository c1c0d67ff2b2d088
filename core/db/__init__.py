"""Storage: SQLAlchemy 2 Core tables, engines for SQLite and PostgreSQL, repositories, unit of work."""
