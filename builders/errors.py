"""Errors the builders raise on bad input. Each subclasses AtlasError, so the CLI prints one line."""

from __future__ import annotations

from atlas.errors import AtlasError


class LoadError(AtlasError):
    """A model or SAE could not be read: missing file, unreadable config, nothing to download."""


class UnsupportedArchitecture(LoadError):
    """The model's architecture is not one whose weights this loader knows how to read."""


class UnknownSAEFormat(LoadError):
    """The path is not laid out like any SAE format the loader knows."""


class CorruptWeights(LoadError):
    """A weight file is truncated, not what its name says, has wrong shapes, or holds NaN/inf."""


class SAEMismatch(LoadError):
    """The SAE does not fit the model: d_in, layer or hook point disagree."""


class BuildError(AtlasError):
    """A build that cannot start or continue (bad settings, stale partial file, existing output)."""
