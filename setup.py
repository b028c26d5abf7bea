"""Build hook: a wheel carries the repository's atlas.db.example inside the atlas package.

The file is kept once in git, at the top of the repository (the README opens
it there). ``build_py`` copies it to ``atlas/_bundled/`` in the build tree, so
that a non-editable install (a wheel, ``pip install .``) finds it through
``atlas.bundled.bundled_example()``. An editable install reads it in place.
Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

EXAMPLE = Path(__file__).resolve().parent / "atlas.db.example"


class BuildPyWithExample(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # the editable package finds the file at the top of the checkout
        if not EXAMPLE.is_file():
            self.warn(f"{EXAMPLE} is missing: this build carries no bundled example atlas")
            return
        target = Path(self.build_lib) / "atlas" / "_bundled" / EXAMPLE.name
        self.mkpath(str(target.parent))
        self.copy_file(str(EXAMPLE), str(target))


setup(cmdclass={"build_py": BuildPyWithExample})
