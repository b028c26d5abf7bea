"""sae-atlas: what SAE features do, read from the weights, kept in one SQLite file.

This package is the spine: schema, read/write API and CLI. It imports only the
standard library, click and numpy -- never torch or textual.
"""

__version__ = "0.1.0"

from atlas.db import Atlas, create_atlas, migrate, open_atlas  # noqa: E402
from atlas.errors import (  # noqa: E402
    AtlasError,
    BadQuery,
    FeatureNotFound,
    NeedsMigration,
    NotAnAtlas,
    ReadOnlyAtlas,
    SAENotFound,
    SchemaTooNew,
)
from atlas.migrations import SCHEMA_VERSION  # noqa: E402

__all__ = [
    "Atlas",
    "AtlasError",
    "BadQuery",
    "FeatureNotFound",
    "NeedsMigration",
    "NotAnAtlas",
    "ReadOnlyAtlas",
    "SAENotFound",
    "SCHEMA_VERSION",
    "SchemaTooNew",
    "create_atlas",
    "migrate",
    "open_atlas",
]
