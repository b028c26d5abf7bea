"""Small named exceptions. The CLI turns each into one line on stderr and exit 1."""


class AtlasError(Exception):
    """Base class for every error the atlas library raises on bad input."""


class NotAnAtlas(AtlasError):
    """The file is missing, not SQLite, or SQLite without the atlas tables."""


class SchemaTooNew(AtlasError):
    """The atlas was written by a newer sae-atlas."""


class NeedsMigration(AtlasError):
    """The atlas is older than this sae-atlas and must be migrated to be written."""


class ReadOnlyAtlas(AtlasError):
    """A write was asked of an atlas opened read-only (or of a read-only file)."""


class FeatureNotFound(AtlasError):
    """No feature matches the name or id given."""


class SAENotFound(AtlasError):
    """No SAE matches the name given."""


class BadQuery(AtlasError):
    """Ad-hoc SQL that SQLite rejected, or that tried to write."""
