"""Backends. Each module imports its engine's package lazily, so importing this package
never needs aiosqlite or redis."""
