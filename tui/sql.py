"""The console's SQL lives in atlas.query (one engine for the CLI and the TUI); kept for old imports."""

from atlas.query import clean, export, run_page

__all__ = ["clean", "export", "run_page"]
