"""Opening untrusted atlases: the mechanisms one at a time (the hostile suite runs them all together).

Deadlines and ctrl-c, busy files and full disks, the WAL reader that creates
no file, the schema check's derivation from schema.sql + migrations, the
defensive flag and the write authorizer, streaming `sql`, and the browser
quitting while a worker's query runs.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from atlas import db as atlas_db
from atlas import open_atlas
from atlas.cli import cli
from atlas.errors import AtlasBusy, ForeignSchema, QueryTimeout, StorageError, explain_sqlite_error
from atlas.migrations import schema_sql
from atlas.query import run_page
from atlas.schema_check import check_schema, expected
from tests.conftest import query, sha256_of
from tests.hostile_atlases import wal_without_shm

FOREVER = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c"
CLI = [sys.executable, "-c", "from atlas.cli import cli; cli()"]


def one_line(result) -> str:
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# ------------------------------------------------------------------ deadlines and ctrl-c
def test_every_read_connection_has_a_deadline(synthetic_atlas: Path) -> None:
    with open_atlas(synthetic_atlas) as a:
        assert a.conn.deadline_s == atlas_db.READ_DEADLINE_S
    with open_atlas(synthetic_atlas, deadline_s=0.2) as a:
        t0 = time.perf_counter()
        with pytest.raises(sqlite3.OperationalError) as e:
            a.conn.execute(FOREVER).fetchone()
        assert time.perf_counter() - t0 < 10
        err = explain_sqlite_error(e.value)
        assert isinstance(err, QueryTimeout) and "longer than 0.2 s" in str(err)
        # the next statement gets a fresh deadline
        assert a.conn.execute("SELECT COUNT(*) FROM features").fetchone()[0] == 400


@pytest.mark.parametrize("timeout", ["0", "30"])
def test_ctrl_c_stops_a_query_and_says_so(synthetic_atlas: Path, timeout: str) -> None:
    """The issue: with --timeout 0 ctrl-c did nothing; with the default it said 'ran longer than 30 s'."""
    proc = subprocess.Popen(
        [*CLI, "sql", "--db", str(synthetic_atlas), "--timeout", timeout, FOREVER],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(2.0)  # started and inside SQLite (imports take well under this)
    assert proc.poll() is None
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.perf_counter() - t0 < 10
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.strip().splitlines() == ["Error: interrupted (ctrl-c)"], err


def test_browser_quits_while_a_worker_query_runs(synthetic_atlas: Path) -> None:
    """ctrl+q interrupts the workers' connections, so the app ends at once even mid-query."""
    from textual.widgets import Input

    from tui.app import make_app
    from tui.screens.sql_console import SqlConsoleScreen
    from tui.testing import settle

    app = make_app(synthetic_atlas, history_path=None)
    timings = {}

    async def journey() -> None:
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            await pilot.press("colon")
            assert isinstance(app.screen, SqlConsoleScreen)
            app.screen.query_one("#sql-input", Input).value = FOREVER
            await pilot.press("enter")
            for _ in range(100):  # until the worker is inside SQLite
                await pilot.pause(0.05)
                if app.screen.running is not None:
                    break
            assert app.screen.running is not None
            await pilot.pause(0.5)
            timings["quit"] = time.perf_counter()
            await pilot.press("ctrl+q")
        timings["gone"] = time.perf_counter()

    asyncio.run(asyncio.wait_for(journey(), 120))
    assert timings["gone"] - timings["quit"] < 10  # the console's own deadline is 60 s


# ------------------------------------------------------------------ concurrency, disk, folders
_LABELLER = textwrap.dedent(
    """
    import sys
    from click.testing import CliRunner
    from atlas.cli import cli
    db, who = sys.argv[1], sys.argv[2]
    failed = []
    for i in range(100):
        r = CliRunner().invoke(cli, ["label", "--db", db, f"L2.res/{i}", f"{who} label {i}"])
        if r.exit_code:
            failed.append(r.output.strip())
    print(len(failed), failed[:3])
    """
)


def test_two_processes_labelling_at_once_all_land(synthetic_atlas: Path) -> None:
    """The issue: 46 of 200 labels failed with 'database is locked (is the atlas damaged?)'."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _LABELLER, str(synthetic_atlas), who], stdout=subprocess.PIPE, text=True
        )
        for who in ("alice", "bob")
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs) and all(o.startswith("0 ") for o in outs), outs
    n = query(synthetic_atlas, "SELECT COUNT(*) FROM labels WHERE source = 'user'")[0][0]
    assert n == 200
    assert query(synthetic_atlas, "SELECT COUNT(*) FROM labels_fts WHERE labels_fts MATCH 'alice OR bob'")[0][0] == 200


def test_busy_file_says_busy_not_damaged(synthetic_atlas: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atlas_db, "BUSY_TIMEOUT_S", 0.3)
    holder = sqlite3.connect(synthetic_atlas, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer, mid-transaction
    try:
        line = one_line(CliRunner().invoke(cli, ["label", "--db", str(synthetic_atlas), "L2.res/1", "x"]))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "busy" in line and "damaged" not in line and "validate" not in line, line


def test_disk_full_is_named(synthetic_atlas: Path) -> None:
    """A write that runs out of room (max_page_count stands in for the disk) ends as 'disk full', the file intact."""
    before = sha256_of(synthetic_atlas)
    with open_atlas(synthetic_atlas, readonly=False) as a:
        a.conn.execute(f"PRAGMA max_page_count = {a.conn.execute('PRAGMA page_count').fetchone()[0]}")
        with pytest.raises(sqlite3.Error) as e:
            with a.transaction():
                fid = a.resolve_feature("L2.res/1")
                for i in range(50):
                    a.add_label(fid, f"label {i} " + "x" * 5000, kind="free", source="user")
        err = explain_sqlite_error(e.value)
    assert isinstance(err, StorageError) and str(err).startswith("disk full"), str(err)
    assert sha256_of(synthetic_atlas) == before


def test_no_such_folder(tmp_path: Path, synthetic_atlas: Path) -> None:
    with pytest.raises(StorageError, match="no such folder"):
        atlas_db.create_atlas(tmp_path / "missing" / "new.db")
    line = one_line(
        CliRunner().invoke(
            cli, ["export", "--db", str(synthetic_atlas), str(tmp_path / "nope" / "x.db"), "--sae", "L2.res"]
        )
    )
    assert "no such" in line, line


# ------------------------------------------------------------------ reading without creating files
def test_wal_with_log_and_no_shm_reads_the_log_and_creates_nothing(synthetic_atlas: Path) -> None:
    wal_without_shm(synthetic_atlas)
    folder = synthetic_atlas.parent
    before = {p.name: sha256_of(p) for p in folder.iterdir()}
    assert sorted(before) == ["atlas.db", "atlas.db-wal"]
    assert "in_wal" not in query_plain_file_without_wal(synthetic_atlas)  # the change is only in the log
    for argv in (["info", "--json"], ["show", "L2.res/3"], ["sql", "SELECT provenance FROM atlas_info"], ["validate"]):
        r = CliRunner().invoke(cli, [argv[0], "--db", str(synthetic_atlas), *argv[1:]])
        assert r.exit_code == 0, (argv, r.output)
        assert {p.name: sha256_of(p) for p in folder.iterdir()} == before, argv
    info = json.loads(CliRunner().invoke(cli, ["info", "--db", str(synthetic_atlas), "--json"]).stdout)
    assert info["provenance"]["in_wal"] is True  # the log's committed content was read


def query_plain_file_without_wal(path: Path) -> str:
    """The provenance as the main file alone holds it (immutable: SQLite ignores the -wal)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        return conn.execute("SELECT provenance FROM atlas_info").fetchone()[0]
    finally:
        conn.close()


def test_sql_limit_0_streams(synthetic_atlas: Path, tmp_path: Path) -> None:
    """`sql --limit 0 --csv` writes rows as it reads them: memory does not grow with the result (the issue: 2 GB)."""
    rows = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000000) SELECT x, printf('%080d', x) FROM c"

    def peak_mb(sql: str) -> tuple[float, float]:
        code = (
            "import resource, sys\nfrom atlas.cli import cli\n"
            "try:\n    cli(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            "sys.stderr.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\nsys.exit(code)"
        )
        out = tmp_path / "out.csv"
        with open(out, "w") as fh:
            p = subprocess.run(
                [sys.executable, "-c", code, "sql", "--db", str(synthetic_atlas), "--limit", "0", "--timeout", "0", "--csv", sql],
                stdout=fh, stderr=subprocess.PIPE, text=True, timeout=300,
            )  # fmt: skip
        assert p.returncode == 0, p.stderr
        return int(p.stderr.strip().splitlines()[-1]) / 1024, out.stat().st_size / 2**20

    small, _ = peak_mb("SELECT 1")
    big, written = peak_mb(rows)
    assert written > 80  # ~90 MB of CSV went through
    assert big - small < 40, (small, big)  # held in memory, 1M rows of 80-char text would be well over 150 MB


# ------------------------------------------------------------------ the schema check and the locks
def test_expected_texts_are_what_sqlite_stores() -> None:
    """The check's fast path compares strings: the texts derived from schema.sql must be SQLite's own."""
    ref = sqlite3.connect(":memory:")
    ref.executescript(schema_sql())
    stored = {name: sql for name, sql in ref.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")}
    current = expected().current
    assert {n: d.stored for n, d in current.items()} == {n: stored[n] for n in current}
    assert {"saes", "labels_fts", "labels_ai", "sae_summary", "features_du_top1_z"} <= set(current)


def test_a_migration_is_known_to_the_check(synthetic_atlas: Path) -> None:
    """A migration's ALTER TABLE ADD COLUMN and CREATE statements are sae-atlas's too (no hand-kept list)."""
    migs = ((1, "initial", None), (2, "reviewer", "ALTER TABLE labels ADD COLUMN reviewer TEXT;\n"
            "CREATE VIEW reviewed AS SELECT * FROM labels WHERE reviewer IS NOT NULL;"))  # fmt: skip
    with sqlite3.connect(synthetic_atlas) as c:
        c.execute("ALTER TABLE labels ADD COLUMN reviewer TEXT")
        c.execute("CREATE TRIGGER reviewed_ai AFTER INSERT ON labels BEGIN SELECT 1; END")
        c.execute("PRAGMA user_version = 2")
    c.close()
    conn = sqlite3.connect(synthetic_atlas)
    rep = check_schema(conn, 2, schema_version=2, migrations=migs)
    assert rep.refused == [] and rep.write_refused == ["trigger reviewed_ai on labels"], rep
    rep1 = check_schema(conn, 2, schema_version=2, migrations=migs[:1])  # without the migration: foreign
    assert any("extra column reviewer" in p for p in rep1.refused), rep1
    conn.close()


def test_defensive_flag_and_fts3_tokenizer(synthetic_atlas: Path) -> None:
    with open_atlas(synthetic_atlas, readonly=False) as a:
        a.conn.execute("PRAGMA writable_schema = ON")
        with pytest.raises(sqlite3.Error, match="may not be modified"):
            a.conn.execute("UPDATE sqlite_master SET sql = sql WHERE name = 'labels'")
    line = one_line(CliRunner().invoke(cli, ["sql", "--db", str(synthetic_atlas), "SELECT fts3_tokenizer('simple')"]))
    assert "refused" in line and "not authorized" in line
    with open_atlas(synthetic_atlas) as a, pytest.raises(Exception, match="not authorized"):
        run_page(a, "SELECT hex(fts3_tokenizer('simple'))")  # the TUI console: the same engine


def test_a_trigger_planted_after_the_check_still_never_runs(synthetic_atlas: Path) -> None:
    """The write authorizer is a second lock: a trigger that appears between the check and the write is denied."""
    n_scores = query(synthetic_atlas, "SELECT COUNT(*) FROM token_scores")[0][0]
    with open_atlas(synthetic_atlas, readonly=False) as a:
        with sqlite3.connect(synthetic_atlas) as other:
            other.execute("CREATE TRIGGER evil AFTER INSERT ON labels BEGIN DELETE FROM token_scores; END")
        other.close()
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            with a.transaction():
                a.add_label(a.resolve_feature("L2.res/1"), "hello", kind="free", source="user")
    assert query(synthetic_atlas, "SELECT COUNT(*) FROM token_scores")[0][0] == n_scores
    with pytest.raises(ForeignSchema, match="trigger evil"):
        open_atlas(synthetic_atlas, readonly=False)


def test_busy_error_class() -> None:
    err = explain_sqlite_error(sqlite3.OperationalError("database is locked"))
    assert isinstance(err, AtlasBusy) and "damaged" not in str(err)


def test_interrupt_env_is_clean() -> None:
    """The CLI's ctrl-c handler is removed after each command (tests run many in one process)."""
    before = signal.getsignal(signal.SIGINT)
    CliRunner().invoke(cli, ["--version"])
    assert signal.getsignal(signal.SIGINT) is before


def test_validate_details_stay_short_however_many_rows_are_wrong(synthetic_atlas: Path) -> None:
    """The issue: on a 10^7-row file validate printed one 89 MB line. Every detail is a bounded summary."""
    with sqlite3.connect(synthetic_atlas) as c:
        c.execute("PRAGMA foreign_keys = OFF")
        c.execute("PRAGMA ignore_check_constraints = ON")
        c.execute("UPDATE token_scores SET feature_id = feature_id + 100000, token_id = token_id + 5000")
        c.execute("UPDATE labels SET evidence = 'not json'")
        c.execute("UPDATE features SET du_max = 'text'")
    c.close()
    r = CliRunner().invoke(cli, ["validate", "--db", str(synthetic_atlas)])
    assert r.exit_code == 1, r.output
    lines = r.stdout.splitlines()
    assert sum(line.startswith("FAIL") for line in lines) == 3, r.stdout
    assert max(len(line) for line in lines) < 500, max(lines, key=len)
    n_scores = query(synthetic_atlas, "SELECT COUNT(*) FROM token_scores")[0][0]
    n_labels = query(synthetic_atlas, "SELECT COUNT(*) FROM labels WHERE evidence IS NOT NULL")[0][0]
    assert f"dangling references: token_scores -> features {n_scores:,}" in r.stdout
    assert "features.du_max: 400 values of another type" in r.stdout
    assert f"labels.evidence: {n_labels:,} values are not valid JSON" in r.stdout


def test_migrate_accepts_an_old_trigger_its_migration_replaces(synthetic_atlas: Path, monkeypatch) -> None:
    """An older version's trigger that the next version redefines is sae-atlas's own: migrate runs; any other is refused."""
    from atlas import schema_check

    nxt = atlas_db.SCHEMA_VERSION + 1
    v_next = (nxt, "labels_ai redefined", "DROP TRIGGER IF EXISTS labels_ai;\nCREATE TRIGGER labels_ai AFTER INSERT "
              "ON labels BEGIN INSERT INTO labels_fts (rowid, text) VALUES (new.label_id, new.text); END;")  # fmt: skip
    monkeypatch.setattr(atlas_db, "SCHEMA_VERSION", nxt)
    monkeypatch.setattr(atlas_db, "MIGRATIONS", [*atlas_db.MIGRATIONS, v_next])
    monkeypatch.setattr(schema_check, "MIGRATIONS", [*atlas_db.MIGRATIONS])
    with sqlite3.connect(synthetic_atlas) as c:  # the trigger as an older sae-atlas wrote it (a text no version has)
        c.execute("DROP TRIGGER labels_ai")
        c.execute("CREATE TRIGGER labels_ai AFTER INSERT ON labels BEGIN "
                  "INSERT INTO labels_fts (rowid, text) VALUES (new.label_id, new.text || ''); END")  # fmt: skip
    c.close()
    assert atlas_db.migrate(synthetic_atlas) == [(nxt, "labels_ai redefined")]
    with sqlite3.connect(synthetic_atlas) as c:
        c.execute("CREATE TRIGGER evil AFTER INSERT ON labels BEGIN DELETE FROM edges; END")
        c.execute(f"PRAGMA user_version = {nxt - 1}")
    c.close()
    with pytest.raises(ForeignSchema, match="trigger evil"):
        atlas_db.migrate(synthetic_atlas)


def test_export_and_merge_read_a_wal_source_without_creating_files(synthetic_atlas: Path, tmp_path_factory) -> None:
    src = synthetic_atlas
    wal_without_shm(src)
    files = lambda: {p.name: sha256_of(p) for p in src.parent.iterdir() if p.is_file()}  # noqa: E731
    before = files()
    with open_atlas(src) as a:
        provenance = a.provenance()
    out = tmp_path_factory.mktemp("out")
    r = CliRunner().invoke(cli, ["export", "--db", str(src), str(out / "l2.db"), "--sae", "L2.res"])
    assert r.exit_code == 0, r.output
    atlas_db.create_atlas(out / "other.db", provenance=provenance).close()
    r = CliRunner().invoke(cli, ["merge", str(src), str(out / "other.db"), "-o", str(out / "m.db")])
    assert r.exit_code == 0, r.output
    assert files() == before
    assert "in_wal" in query(out / "m.db", "SELECT provenance FROM atlas_info")[0][0]  # the log's content came along
