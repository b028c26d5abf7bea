"""Property tests: whatever a user types or points the CLI at, there is no
traceback, the exit code is 0, 1 or 2, and a read command never writes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas.cli import cli
from tests.conftest import sha256_of

# CI runs a fixed (derandomized) set of examples so a submission's result does not depend on luck;
# local runs explore new examples each time.
SETTINGS = settings(
    max_examples=int(os.environ.get("SAE_ATLAS_HYPOTHESIS_EXAMPLES", "40")),
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def atlas_copy(tmp_path_factory: pytest.TempPathFactory, synthetic_atlas_master: Path) -> tuple[Path, str]:
    """One copy for all examples of a module: nothing may write to it, so it stays valid."""
    path = tmp_path_factory.mktemp("prop") / "atlas.db"
    shutil.copyfile(synthetic_atlas_master, path)
    return path, sha256_of(path)


def check(result: Result, *, report_on_stdout: bool = False) -> None:
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    # every failure is a named, explained one, not the catch-all
    assert "unexpected error" not in result.output, result.output
    if result.exit_code == 1 and not (report_on_stdout and result.stdout):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def unchanged(path: Path, digest: str) -> None:
    assert sha256_of(path) == digest
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no journal, no new file


sae_names = st.sampled_from(["L2.res", "L6.res", "L3.res", "", "L2", "res", "L2.res/1"])
feature_specs = st.one_of(
    st.text(max_size=30),
    st.builds(lambda s, i: f"{s}/{i}", sae_names, st.integers(min_value=-5, max_value=10**12)),
    st.builds(lambda i: f"#{i}", st.integers(min_value=-5, max_value=10**20)),
)


@SETTINGS
@given(spec=feature_specs, command=st.sampled_from(["show", "edges", "label --list", "show --json"]))
def test_random_feature_specs(atlas_copy: tuple[Path, str], spec: str, command: str) -> None:
    path, digest = atlas_copy
    argv = [*command.split(), "--db", str(path), "--", spec]
    check(CliRunner().invoke(cli, argv))
    unchanged(path, digest)


def test_valid_spec_shows(atlas_copy: tuple[Path, str]) -> None:
    """The property above must also cover successes: a real name works through `--`."""
    path, _ = atlas_copy
    r = CliRunner().invoke(cli, ["show", "--db", str(path), "--", "L6.res/199"])
    assert r.exit_code == 0 and r.stdout.startswith("L6.res/199")


SQL_WORDS = [
    "SELECT", "*", "FROM", "features", "labels", "token_scores", "WHERE", "1", "=", "'x'", ";", "(", ")",
    "INSERT", "INTO", "VALUES", "DELETE", "UPDATE", "SET", "DROP", "TABLE", "CREATE", "ATTACH", "DATABASE",
    "AS", "PRAGMA", "writable_schema", "user_version", "ON", "VACUUM", "ANALYZE", "labels_fts", "MATCH",
    "WITH", "RECURSIVE", "UNION", "ALL", "LIMIT", "-1", "ORDER", "BY", ",", "name", "sqlite_master", ":x",
    "?", "0x", "zeroblob(1e9)", "randomblob(10)", "json('x')", "NULL", "'/tmp/evil.db'",
]  # fmt: skip
sql_strings = st.one_of(st.text(max_size=80), st.lists(st.sampled_from(SQL_WORDS), max_size=12).map(" ".join))


@SETTINGS
@given(sql=sql_strings, fmt=st.sampled_from(["--json", "--csv", "--nl", "--tsv", None]))
def test_random_sql(atlas_copy: tuple[Path, str], sql: str, fmt: str | None) -> None:
    path, digest = atlas_copy
    argv = ["sql", "--db", str(path), "--timeout", "2", "--limit", "50", *([fmt] if fmt else []), "--", sql]
    check(CliRunner().invoke(cli, argv))
    unchanged(path, digest)


@SETTINGS
@given(
    token=st.text(max_size=12),
    mode=st.sampled_from(["--promotes", "--suppresses", "--driven-by", "--label"]),
    exact=st.booleans(),
)
def test_random_search_text(atlas_copy: tuple[Path, str], token: str, mode: str, exact: bool) -> None:
    path, digest = atlas_copy
    argv = ["search", "--db", str(path), *(["--exact"] if exact and mode != "--label" else []), mode, token]
    check(CliRunner().invoke(cli, argv))
    unchanged(path, digest)


COMMANDS = [
    ["info"],
    ["show", "L2.res/1"],
    ["sql", "SELECT COUNT(*) FROM features"],
    ["validate", "--quick"],
    ["stats"],
]


@SETTINGS
@given(
    content=st.one_of(
        st.binary(max_size=4096),
        st.binary(max_size=4096).map(lambda b: b"SQLite format 3\x00" + b),
    ),
    command=st.sampled_from(COMMANDS),
)
def test_random_file_contents(tmp_path_factory: pytest.TempPathFactory, content: bytes, command: list[str]) -> None:
    path = tmp_path_factory.mktemp("bytes") / "random.db"
    path.write_bytes(content)
    digest = sha256_of(path)
    result = CliRunner().invoke(cli, [*command, "--db", str(path)])
    check(result)
    assert result.exit_code == 1  # never an atlas
    unchanged(path, digest)


@SETTINGS
@given(
    offset=st.integers(min_value=0, max_value=10**9),
    junk=st.binary(min_size=1, max_size=512),
    command=st.sampled_from(COMMANDS),
)
def test_damaged_atlas(
    tmp_path_factory: pytest.TempPathFactory, synthetic_atlas_master: Path, offset: int, junk: bytes, command: list[str]
) -> None:
    """A real atlas with a stretch of bytes overwritten somewhere: any outcome but a crash or a write."""
    data = bytearray(synthetic_atlas_master.read_bytes())
    at = offset % len(data)
    data[at : at + len(junk)] = junk
    path = tmp_path_factory.mktemp("damaged") / "atlas.db"
    path.write_bytes(bytes(data[: len(synthetic_atlas_master.read_bytes())]))
    digest = sha256_of(path)
    # `validate` reports a damaged atlas as failed checks on stdout (exit 1), not as an error line
    check(CliRunner().invoke(cli, [*command, "--db", str(path)]), report_on_stdout=command[0] == "validate")
    unchanged(path, digest)
