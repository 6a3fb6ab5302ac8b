"""API tokens: roles, scopes and their stores (SQLite file, PostgreSQL schema)."""
