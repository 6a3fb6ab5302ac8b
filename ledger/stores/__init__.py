"""Log store adapters: SQLite (embedded) and PostgreSQL (production); the domain imports none."""
