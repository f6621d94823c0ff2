"""The store layer: the only code that knows whether it talks to SQLite or PostgreSQL."""
