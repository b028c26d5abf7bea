"""The example's two errors: each prints as one line and exit 1 from its command."""

from __future__ import annotations

try:
    from atlas.errors import AtlasError as _ErrorBase
except ImportError:  # a bare GPU machine runs the trainer without the atlas's dependencies (sqlite-utils)
    _ErrorBase = Exception  # type: ignore[misc,assignment]


class TrainError(_ErrorBase):  # type: ignore[misc,valid-type]
    """Bad input to the trainer: wrong shapes, unknown hook, missing file."""


class ExampleError(_ErrorBase):  # type: ignore[misc,valid-type]
    """A step of the example recipe failed (download, checksum, missing corpus, missing dictionary)."""
