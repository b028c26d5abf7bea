"""Weight passes: pure functions from model and SAE weights to atlas rows, one module per pass.

A module that ends with ``PASS = Pass(...)`` (see :mod:`builders.passes.base`)
is a pass: :func:`registry` finds it, so adding a pass is adding a module.
The other modules here (``base``, ``common``, ``predicts``) are shared pieces.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from builders.passes.base import Pass


@functools.cache
def registry() -> dict[str, Pass]:
    """Every pass of this package by name, in build order (``Pass.order``)."""
    from builders.passes.base import Pass

    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        p = getattr(module, "PASS", None)
        if isinstance(p, Pass):
            found.append(p)
    found.sort(key=lambda p: p.order)
    for attr in ("name", "order"):
        values = [getattr(p, attr) for p in found]
        if len(set(values)) != len(values):
            raise RuntimeError(f"two passes share a {attr}: {values}")
    return {p.name: p for p in found}


def pass_names() -> tuple[str, ...]:
    """Names of every pass, in build order."""
    return tuple(registry())
