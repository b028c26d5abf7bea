"""One Screen per file."""
