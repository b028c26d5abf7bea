"""The hostile-atlas suite: every CLI command and the TUI start-up against crafted and damaged files.

Each case of tests/hostile_atlases.py is built once per session from a clean
atlas (the *base*). Every command then runs in-process on it, each with a
deadline, and must end in one of two ways:

- a correct answer: exit 0 and the same output as on the clean base (the
  damage or hostility did not touch what the command reads), or
- exit 1 with exactly one line on stderr, naming the problem (never the
  catch-all "unexpected error"), and no traceback.

A read never changes the file's bytes or creates a file beside it (no -shm,
-journal). A write runs only where the user asked, on a copy here, and either
succeeds as on the base or changes nothing. Per case, what is expected:

- ``refused``: sae-atlas's own tables are not sae-atlas's (a view in place of a
  table, foreign keys or generated columns added, another FTS tokenizer, a
  truncated file): every command refuses it in one line naming the object;
  `sql` reads it as it is, with a deadline; `validate` reports it.
- ``writes refused``: a trigger sae-atlas did not create: reads answer as on the
  base (no read fires a trigger), every write is refused, nothing changes.
- ``views shadowed``: a view sae-atlas defines was changed: sae-atlas's own
  commands read no view, so they answer as on the base; `sql` reads
  sae-atlas's definition and says so.
- ``damaged``: each command answers as on the base or names the damage.
- ``as clean``: shapes a file may legitimately have (WAL with or without a log,
  the user's own objects, a 5 MB provenance): every command answers as on the base.
"""

from __future__ import annotations

import asyncio
import faulthandler
import hashlib
import json
import re
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from atlas import db as atlas_db
from atlas.cli import cli
from atlas.errors import AtlasError
from atlas.synthetic import build_synthetic_atlas
from tests.hostile_atlases import CASES, FEATURE, HUGE_BYTES, make_base, make_case, user_label_id

REFUSED = {"view_in_place_of_saes", "view_in_place_of_token_scores", "cascade_from_labels", "generated_column",
           "other_fts_tokenizer", "shadow_table_is_a_view", "truncated_file"}  # fmt: skip
WRITES_REFUSED = {"trigger_empties_tables", "trigger_on_delete", "changed_sae_atlas_trigger"}
VIEWS_SHADOWED = {"poisoned_sae_summary", "poisoned_feature_names"}
AS_CLEAN = {name for name, (cat, _) in CASES.items() if cat == "files"}
DAMAGED = {name for name, (cat, _) in CASES.items() if cat == "damaged"} - REFUSED
assert REFUSED | WRITES_REFUSED | VIEWS_SHADOWED | AS_CLEAN | DAMAGED == set(CASES)

REPORT = "report --no-plots --no-figures -o {report}"
# Damage a command shows as it is stored, rightly: a typed value the damage changed, or a label the damage
# took out of the full-text matches. `validate` names each of these; `sql` always shows the stored data.
SHOWS_THE_DAMAGE = {
    "huge_integer": {"info --json", "stats", REPORT},  # d_sae 2**63-1, shown as stored
    # L6.res's model_id 99, shown as stored; its features match no token of a model that exists
    "dangling_model": {
        "info --json",
        "search --promotes Paris",
        "search --suppresses the",
        "search --driven-by the",
        "search --token city --phase ee --sign -1",
        "search --promotes par",  # partial matches only
        f"trace {FEATURE}",  # the tokens of L6.res's features, whose model is gone, shown by id (#123)
        f"trace {FEATURE} --json",
    },
    "no_atlas_info_row": {f"show {FEATURE}", f"show {FEATURE} --json"},  # no provenance row: no verdict rule
    # FEATURE's label text is gone from the index's matches; deleting the user label says its stored bytes
    "blob_for_text": {"search --label synthetic", "label --delete {label_id}"},
    "huge_label": {"search --label synthetic"},
    "not_utf8_text": {"search --label synthetic"},
}

SQL_TIMEOUT = "1"  # seconds: the user's own query on a file whose views never end
COMMAND_DEADLINE_S = 60.0  # generous on a loaded machine; a hang is minutes, not this

READS: list[list[str]] = [
    ["info", "--json"], ["info"], ["show", FEATURE], ["show", FEATURE, "--json"],
    ["search", "--promotes", "Paris"], ["search", "--suppresses", "the"], ["search", "--driven-by", "the"],
    ["search", "--token", "city", "--phase", "ee", "--sign", "-1"], ["search", "--promotes", "par"],
    ["search", "--label", "synthetic"], ["search", "--metric", "du_top1_z", "--min", "0"],
    ["top", "du_top1_z"], ["edges", FEATURE], ["label", "--list", FEATURE], ["stats"],
    ["trace", FEATURE], ["trace", FEATURE, "--json"],
    ["sql", "SELECT name, d_sae FROM saes ORDER BY name", "--timeout", SQL_TIMEOUT],
    ["sql", "SELECT * FROM sae_summary ORDER BY name", "--timeout", SQL_TIMEOUT],
    ["sql", "SELECT * FROM labels ORDER BY label_id", "--limit", "0", "--csv", "--timeout", SQL_TIMEOUT],
    ["validate"], ["report", "--no-plots", "--no-figures", "-o", "{report}"],
]  # fmt: skip
WRITES: list[list[str]] = [
    ["label", FEATURE, "a new label"], ["label", "--delete", "{label_id}"], ["export", "{out}", "--sae", "L2.res"],
    ["migrate"], ["merge", "{db}", "{base}", "-o", "{out}"],
]  # fmt: skip


# ------------------------------------------------------------------ fixtures
@pytest.fixture(autouse=True)
def small_value_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cap on one value, lowered so that the 'huge row' case stays a small file (test_huge_value_real_cap
    checks the real cap on a real 80 MB value)."""
    monkeypatch.setattr(atlas_db, "MAX_VALUE_BYTES", HUGE_BYTES // 2)


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small clean atlas (2 SAEs x 60 features): the cases are about shapes, not sizes, and ~900 commands run."""
    folder = tmp_path_factory.mktemp("hostile-base")
    clean = build_synthetic_atlas(folder / "clean.db", n_features=120, layers=(2, 6), d_vocab=300, k=10, seed=0,
                                  n_virtual=2)  # fmt: skip
    return make_base(clean, folder / "base.db")


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, base: Path) -> dict[str, Path]:
    """Each case built once per session (lazily: a worker builds only the cases it runs)."""
    return {}


def case_file(name: str, built: dict[str, Path], base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if name not in built:
        built[name] = make_case(name, base, tmp_path_factory.mktemp(f"hostile-{name}") / "atlas.db")
    return built[name]


@pytest.fixture(scope="session")
def base_answers(base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What every command prints on the clean base: the oracle for 'a correct answer'."""
    out = {}
    for argv in READS + WRITES:
        folder = tmp_path_factory.mktemp("base-run")
        db = folder / "atlas.db"
        shutil.copyfile(base, db)
        r = invoke(argv, db, base, folder)
        assert r.exit_code == 0, (argv, r.output)
        out[key(argv)] = normal(r, argv, db, base, folder)
    return out


# ------------------------------------------------------------------ running one command
def key(argv: list[str]) -> str:
    return " ".join(argv)


def invoke(argv: list[str], db: Path, base: Path, folder: Path) -> Result:
    fill = {"report": str(folder / "report"), "out": str(folder / "out.db"), "db": str(db), "base": str(base)}
    if "{label_id}" in argv:
        fill["label_id"] = str(user_label_id(base))
    args = [a.format(**fill) for a in argv]
    if args[0] != "merge":
        args = [args[0], "--db", str(db), *args[1:]]
    faulthandler.dump_traceback_later(COMMAND_DEADLINE_S * 3, exit=True)  # a hang fails loudly, never forever
    t0 = time.perf_counter()
    try:
        r = CliRunner().invoke(cli, args)
    finally:
        faulthandler.cancel_dump_traceback_later()
    elapsed = time.perf_counter() - t0
    assert elapsed < COMMAND_DEADLINE_S, f"{key(argv)} took {elapsed:.0f} s"
    return r


def normal(r: Result, argv: list[str], db: Path, base: Path, folder: Path) -> str:
    """Output with what legitimately differs between two files taken out (paths, timings, provenance)."""
    if argv[:2] == ["info", "--json"]:
        d = json.loads(r.stdout)
        # "labels" says where the user's label overlay is: a folder of each test's own
        return json.dumps({k: v for k, v in d.items() if k not in ("path", "file_bytes", "provenance", "labels")})
    if argv[0] == "info":
        return ""  # its text carries the path, size and provenance; info --json is compared instead
    text = r.stdout.replace(str(db), "DB").replace(str(folder), "DIR").replace(str(base), "BASE")
    if argv[0] == "report":
        text = "\n".join(line for line in text.splitlines() if not line.startswith("wrote "))
    return text


PROGRESS = re.compile(r"^[\w ]+: done in [\d.]+ s$")  # report's steps, said as each finishes


def one_line_error(r: Result, what: str) -> str:
    assert r.exit_code == 1, (what, r.exit_code, r.output)
    lines = [line for line in r.stderr.strip().splitlines() if not PROGRESS.match(line)]
    assert len(lines) == 1 and lines[0].startswith("Error: "), (what, r.stderr)
    assert "unexpected error" not in lines[0] and "Traceback" not in r.output, (what, lines[0])
    return lines[0]


def no_traceback(r: Result, what: str) -> None:
    assert r.exception is None or isinstance(r.exception, SystemExit), (what, repr(r.exception))
    assert "Traceback" not in r.output, what


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_command_on_a_hostile_atlas(
    case: str,
    built: dict[str, Path],
    base: Path,
    base_answers: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    src = case_file(case, built, base, tmp_path_factory)
    folder = tmp_path / "reads"
    folder.mkdir()
    for p in src.parent.iterdir():  # the atlas with its -wal, if the case has one
        shutil.copyfile(p, folder / p.name)
    db = folder / src.name
    before = snapshot(folder)
    for argv in READS:
        r = invoke(argv, db, base, tmp_path)
        what = f"{case}: {key(argv)}"
        no_traceback(r, what)
        assert snapshot(folder) == before, f"{what} changed the file or created one beside it"
        check_read(case, argv, r, normal(r, argv, db, base, tmp_path) if r.exit_code == 0 else None,
                   base_answers[key(argv)], what)  # fmt: skip
    for argv in WRITES:
        wfolder = tmp_path / f"write-{WRITES.index(argv)}"
        wfolder.mkdir()
        for p in src.parent.iterdir():
            shutil.copyfile(p, wfolder / p.name)
        wdb = wfolder / src.name
        wbefore = snapshot(wfolder)
        r = invoke(argv, wdb, base, wfolder)
        what = f"{case}: {key(argv)}"
        no_traceback(r, what)
        if r.exit_code == 0:
            if key(argv) not in SHOWS_THE_DAMAGE.get(case, ()):
                assert normal(r, argv, wdb, base, wfolder) == base_answers[key(argv)], what
            if argv[0] in ("export", "merge"):  # they only read their inputs: one new file, the output
                after = snapshot(wfolder)
                assert {k: after[k] for k in wbefore} == wbefore and set(after) - set(wbefore) == {"out.db"}, what
        else:
            line = one_line_error(r, what)
            changed = {k for k, v in snapshot(wfolder).items() if wbefore.get(k) != v}
            assert not changed, f"{what} failed ({line}) but changed {changed}"
        check_write(case, argv, r, what)


def check_read(case: str, argv: list[str], r: Result, got: str | None, want: str, what: str) -> None:
    if argv[0] == "validate":
        if case in AS_CLEAN:
            assert r.exit_code == 0 and r.stdout.strip().endswith("valid"), (what, r.output)
        else:  # a report on stdout, every failed check one bounded line, exit 1
            assert r.exit_code == 1 and ("FAIL" in r.stdout or r.stderr.startswith("Error: ")), (what, r.output)
            assert all(len(line) < 600 for line in r.output.splitlines()), what
        return
    if argv[0] == "sql" and case in REFUSED | VIEWS_SHADOWED:
        # ad-hoc SQL inspects such a file as it is: an answer, or a one-line error (a deadline, damage)
        if r.exit_code:
            one_line_error(r, what)
        else:
            assert "note:" in r.stderr, (what, r.stderr)
            if case in VIEWS_SHADOWED:
                assert got == want, what  # sae-atlas's own definition answered
        return
    if case in REFUSED:
        line = one_line_error(r, what)
        assert "did not define" in line or "corrupt" in line, (what, line)
        return
    if case in DAMAGED and r.exit_code:
        line = one_line_error(r, what)
        assert any(w in line for w in ("damaged", "validate", "UTF-8", "too big", "corrupt")), (what, line)
        return
    if case in DAMAGED and (argv[0] == "sql" or key(argv) in SHOWS_THE_DAMAGE.get(case, ())):
        assert r.exit_code == 0, (what, r.output)
        return
    assert r.exit_code == 0, (what, r.output)
    assert got == want, what


def check_write(case: str, argv: list[str], r: Result, what: str) -> None:
    writes_file = argv[0] in ("label", "migrate")
    if case in WRITES_REFUSED and writes_file:
        assert r.exit_code == 1 and "refuses a write" in r.stderr, (what, r.output)
    elif case in REFUSED:
        assert r.exit_code == 1, (what, r.output)
    elif case in AS_CLEAN | VIEWS_SHADOWED:
        assert r.exit_code == 0, (what, r.output)


# ------------------------------------------------------------------ the TUI start-up
@pytest.mark.parametrize("case", sorted(CASES))
def test_browser_starts_or_exits_with_one_line(
    case: str, built: dict[str, Path], base: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    from tui.app import make_app
    from tui.screens.overview import OverviewScreen

    src = case_file(case, built, base, tmp_path_factory)
    folder = tmp_path / "tui"
    folder.mkdir()
    for p in src.parent.iterdir():
        shutil.copyfile(p, folder / p.name)
    db = folder / src.name
    before = snapshot(folder)
    try:
        app = make_app(db, history_path=None)
    except AtlasError as e:  # refused before the UI starts: the CLI prints this one line and exits 1
        assert case in REFUSED and "\n" not in str(e), (case, str(e))
        return
    assert case not in REFUSED, case

    async def start() -> None:
        async with app.run_test(size=(120, 36)) as pilot:
            for _ in range(600):  # the overview, or the app giving up on it
                await pilot.pause(0.05)
                screen = app.screen
                if app.fatal_error or (isinstance(screen, OverviewScreen) and screen.query_one("#sae-table").row_count):
                    break
            if not app.fatal_error:
                assert isinstance(app.screen, OverviewScreen)
                assert app.screen.query_one("#sae-table").row_count == 2, case
            await pilot.press("ctrl+q")

    faulthandler.dump_traceback_later(COMMAND_DEADLINE_S * 3, exit=True)
    t0 = time.perf_counter()
    try:
        asyncio.run(asyncio.wait_for(start(), COMMAND_DEADLINE_S))
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert time.perf_counter() - t0 < COMMAND_DEADLINE_S
    if app.fatal_error:
        assert case in DAMAGED, (case, app.fatal_error)
        assert app.return_code == 1 and "\n" not in app.fatal_error, (case, app.fatal_error)
        assert any(w in app.fatal_error for w in ("damaged", "validate", "UTF-8", "too big")), app.fatal_error
    else:
        assert app.return_code in (0, None), case
    assert snapshot(folder) == before, f"{case}: the browser changed the file or created one beside it"


def test_huge_value_real_cap(synthetic_atlas: Path) -> None:
    """An 80 MB label under the real cap (64 MB): `show` names it in one line instead of reading it."""
    with sqlite3.connect(synthetic_atlas) as c:
        c.execute("UPDATE labels SET text = printf('%.*c', 80000000, 'x') WHERE label_id = 1")
    (fid,) = sqlite3.connect(synthetic_atlas).execute("SELECT feature_id FROM labels WHERE label_id = 1").fetchone()
    r = CliRunner().invoke(cli, ["show", "--db", str(synthetic_atlas), f"#{fid}"])
    assert "too big" in one_line_error(r, "show a feature with an 80 MB label")
