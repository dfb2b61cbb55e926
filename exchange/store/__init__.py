"""Storage: SQLModel tables, the database engine, migrations and the hub's store."""
