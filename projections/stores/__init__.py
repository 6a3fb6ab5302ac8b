"""Read model store adapters: SQLite beside the log file, PostgreSQL in the log's schema."""
