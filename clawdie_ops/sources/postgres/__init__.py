"""PostgreSQL: commands, roles, set-aside databases, dump files."""
