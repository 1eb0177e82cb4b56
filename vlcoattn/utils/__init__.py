"""Small shared utilities: CLI error handling, offline asset paths."""
