"""Every command the README shows and every `-h` Example runs on the shipped atlas.db.example and
prints results, so what they promise cannot drift from what the atlas holds.

Commands run as a user would type them, with no --db (so on the bundled example), in a folder
holding the files the examples name as their own: ``my.db`` (a copy upgraded by ``sae-atlas migrate
-o``), ``old.db`` (a copy at schema 1), ``early.db``/``late.db`` (exports). The README's command block
runs top to bottom in one folder, as a reader would run it. ``sae-atlas build`` is left out: it
reads model and SAE weights, not an atlas (CI's wheel job runs a tiny build). ``sae-atlas browse``
runs headless and must draw the SAE table.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from atlas.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLE = ROOT / "atlas.db.example"
NOT_AN_ATLAS_COMMAND = {"build", "registry"}  # registry: about SAELens names; `update` needs the network
# serve runs until stopped: tests/test_serve.py starts it for real (its --print-metadata example runs here)
LONG_RUNNING = {"serve"}
# What a command prints when it found nothing: none of the examples may print this.
EMPTY = re.compile(r"^(no |\(no rows\)|\(none\)|nothing )")


def _code_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def _commands(lines: list[str]) -> list[list[str]]:
    """`sae-atlas ...` commands in shell lines (after `&&`, without comments), as argv lists."""
    out = []
    for line in lines:
        for part in line.split("&&"):
            argv = shlex.split(part, comments=True)
            if argv and argv[0] == "sae-atlas" and not (set(argv[1:2]) & NOT_AN_ATLAS_COMMAND):
                out.append(argv[1:])
    return out


def readme_commands() -> list[list[str]]:
    return _commands([line for block in _code_blocks("bash") for line in block.splitlines()])


def help_examples() -> list[tuple[str, list[str]]]:
    """(command, argv) of every line of every Example block in `sae-atlas -h` and `sae-atlas CMD -h`."""
    runner = CliRunner()
    names = [""] + [n for n in cli.list_commands(None) if n not in NOT_AN_ATLAS_COMMAND]  # type: ignore[arg-type]
    out = []
    for name in names:
        text = runner.invoke(cli, [*([name] if name else []), "-h"]).output
        assert "Example:" in text, f"sae-atlas {name} -h has no Example block"
        block = text.split("Example:", 1)[1].split("\n\n", 1)[0]
        cmds = _commands([line.strip().rstrip("\\") for line in block.splitlines()])
        assert cmds, f"sae-atlas {name} -h: no commands in its Example block"
        if name in LONG_RUNNING:
            cmds = [argv for argv in cmds if "--print-metadata" in argv]
        out += [(name or "sae-atlas", argv) for argv in cmds]
    return out


@pytest.fixture(scope="module")
def user_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the examples name as the user's own, made from the example the way a user would."""
    d = tmp_path_factory.mktemp("user-files")
    runner = CliRunner()
    for argv in (
        ["migrate", "-o", str(d / "my.db")],
        ["export", "--sae", "L2.res", "--sae", "L8.res", str(d / "early.db")],
        ["export", "--sae", "L20.res", "--sae", "L26.res", str(d / "late.db")],
        ["export", "--format", "neuronpedia", "--sae", "L26.res", str(d / "np")],  # what `import -h` reads
    ):
        r = runner.invoke(cli, argv, env={"SAE_ATLAS_DB": None})
        assert r.exit_code == 0, r.output
    shutil.copyfile(EXAMPLE, d / "old.db")
    return d


def _outputs(argv: list[str]) -> set[str]:
    """Files or folders a command writes (they must not exist beforehand)."""
    outs = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-o", "--output")}
    if argv[0] == "export":
        outs.add(argv[-1])
    return outs


def _prints_results(argv: list[str], out: str) -> None:
    text = out.strip()
    assert text, f"sae-atlas {shlex.join(argv)} printed nothing"
    assert not EMPTY.match(text.splitlines()[0]), f"sae-atlas {shlex.join(argv)} found nothing: {text[:200]}"
    if "--json" in argv or "--provenance" in argv:
        assert json.loads(text), f"sae-atlas {shlex.join(argv)}: empty JSON"
    if "--csv" in argv:
        assert len(text.splitlines()) >= 2, f"sae-atlas {shlex.join(argv)}: a header and no rows"


def _browse(argv: list[str], cwd: Path) -> None:
    """`sae-atlas browse [--read-only] [ATLAS]` headless: the overview must list the SAEs."""
    from textual.widgets import DataTable

    from atlas.cli import resolve_db_path
    from tui.app import make_app
    from tui.testing import settle

    args = [a for a in argv[1:] if a != "--read-only"]
    path = resolve_db_path(cwd / args[0] if args else None)

    async def run() -> int:
        app = make_app(path, readonly="--read-only" in argv)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            return app.screen.query_one("#sae-table", DataTable).row_count

    assert asyncio.run(run()) >= 6


def _run(argv: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("SAE_ATLAS_DB", raising=False)
    if argv[0] == "browse":
        _browse(argv, cwd)
        return
    r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 0, f"sae-atlas {shlex.join(argv)} failed: {r.output}"
    _prints_results(argv, r.stdout)


def test_the_readme_command_block_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = readme_commands()
    assert ["browse"] in commands and ["search", "--promotes", "king"] in commands
    before = EXAMPLE.read_bytes()
    for argv in commands:
        _run(argv, tmp_path, monkeypatch)
    assert EXAMPLE.read_bytes() == before  # the label example went to the overlay


@pytest.mark.parametrize(("command", "argv"), help_examples(), ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_every_help_example_prints_results(
    command: str, argv: list[str], user_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = _outputs(argv)
    for f in user_files.iterdir():
        if f.name not in outputs:
            (tmp_path / f.name).symlink_to(f)
    _run(argv, tmp_path, monkeypatch)


def test_the_readme_sql_example_returns_rows(runner: CliRunner) -> None:
    (block,) = _code_blocks("sql")
    r = runner.invoke(cli, ["sql", "--json", "--", block], env={"SAE_ATLAS_DB": None})
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert rows and all(row["rank"] < 5 for row in rows)
    assert any(row["feature"] == "L29.res/598" for row in rows)  # the rebuilt example's " king" feature


def _shown_blocks() -> list[str]:
    return [b for b in _code_blocks("text") if b.startswith("$ sae-atlas ")]


@pytest.mark.parametrize("block", _shown_blocks(), ids=lambda b: b.splitlines()[0][2:])
def test_the_readme_excerpts_are_what_the_commands_print(runner: CliRunner, block: str) -> None:
    """The card (`show`) and the two traces the README shows: every line shown is printed, in order."""
    first, *shown = block.rstrip("\n").splitlines()
    r = runner.invoke(cli, shlex.split(first[2:])[1:], env={"SAE_ATLAS_DB": None})
    assert r.exit_code == 0, r.output
    lines = iter(r.stdout.splitlines())
    for want in shown:  # every line shown, in order (the README leaves some out)
        assert any(line == want for line in lines), f"not printed (or out of order): {want!r}"


def test_the_readme_shows_a_card_and_two_traces() -> None:
    commands = [b.splitlines()[0] for b in _shown_blocks()]
    assert sum(c.startswith("$ sae-atlas show") for c in commands) == 1
    assert sum(c.startswith("$ sae-atlas trace") for c in commands) == 2
