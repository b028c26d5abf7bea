"""Every failure is one line on stderr, click's own usage errors included (the README promises it)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from atlas.cli import cli

USAGE_ERRORS = [
    (["top", "nosuchmetric"], "Invalid value for 'METRIC'"),
    (["label", "L2.res/0", "x", "--kind", "bogus"], "Invalid value for '--kind'"),
    (["--bogus", "info"], "No such option '--bogus'"),
    (["info", "--nope"], "No such option '--nope'"),
    (["show"], "Missing argument 'FEATURE'"),
    (["search"], "give exactly one of"),
    (["search", "--promotes", "a", "--label", "b"], "give exactly one of"),
    (["label", "--list"], "--list takes one FEATURE"),
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
    (["show", "L2.res/0", "-k", "0"], "Invalid value for '-k'"),
    (["browse", "--nope"], "No such option '--nope'"),
    (["report", "--nope"], "No such option '--nope'"),
    (["merge", "a.db", "-o", "b.db"], "merge needs at least two atlases"),
]


@pytest.mark.parametrize(("argv", "message"), USAGE_ERRORS, ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_usage_errors_are_one_line(argv: list[str], message: str) -> None:
    r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("Error: ") and message in lines[0] and "-h')" in lines[0], lines[0]
    assert r.stdout == ""


def test_one_line_in_a_real_process() -> None:
    """The installed entry point, not only CliRunner: what a user's terminal shows."""
    r = subprocess.run(
        [sys.executable, "-c", "from atlas.cli import cli; cli()", "top", "nosuchmetric"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "nosuchmetric" in r.stderr and "top -h')" in r.stderr


def test_no_arguments_still_prints_the_help() -> None:
    r = CliRunner().invoke(cli, [])
    assert "Commands:" in r.output and "Example:" in r.output
