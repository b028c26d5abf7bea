"""Worked examples that use sae-atlas: not part of the installed package (see ``[tool.setuptools]``)."""
