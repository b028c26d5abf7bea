"""SQL console: read-only ad-hoc queries with paged results, CSV/JSON export and a query history."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Header, Input, Static

from atlas import query as sqlmod
from atlas.errors import AtlasError
from atlas.search import token_sql_hint
from tui.messages import QueryDone, QueryFailed
from tui.screens._base import AtlasScreen
from tui.screens.export_dialog import ExportDialog
from tui.widgets.bars import fmt
from tui.widgets.key_bar import KeyBar

PAGE = 200
EXAMPLE = "SELECT name, layer, site, d_sae FROM saes ORDER BY layer"


class SqlConsoleScreen(AtlasScreen):
    BINDINGS = [
        Binding("ctrl+n", "page(1)", "Next page", id="sql.next_page"),
        Binding("ctrl+b", "page(-1)", "Prev page", id="sql.prev_page"),
        Binding("ctrl+o", "export", "Export CSV/JSON", id="sql.export"),
        Binding("ctrl+l", "focus_input", "Edit query", id="sql.edit"),
        Binding("escape", "cancel_or_back", "Stop / back", id="sql.back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.generation = 0
        self.sql = ""
        self.row_offset = 0
        self.more = False
        self.columns: list[str] = []
        self.running: sqlite3.Connection | None = None  # the worker's connection, to interrupt it
        self.history_pos: int | None = None
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder=f"SQL, read-only · enter runs · ↑/↓ history   e.g. {EXAMPLE}", id="sql-input")
        yield Static("", id="sql-error")
        yield Static(
            "Tables: features, saes, models, token_scores, edges, labels, vocab, heads, head_scores; "
            "views: features_view, token_scores_view, edges_view, labels_view, sae_summary.\n"
            + token_sql_hint(self.atlas_app.source.schema_version),
            id="sql-status",
        )
        yield DataTable(id="sql-results", zebra_stripes=True)
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#sql-error").display = False
        self.query_one("#sql-input", Input).focus()
        changed = self.atlas_app.source.schema.changed_views
        if changed:  # safe mode, said once: the engine shadows these with sae-atlas's own definitions
            self.query_one("#sql-status", Static).update(
                f"note: this atlas's view{'s' * (len(changed) > 1)} {', '.join(changed)} "
                f"{'are' if len(changed) > 1 else 'is'} not sae-atlas's; queries read sae-atlas's definition "
                "(main.NAME reads the file's own)"
            )

    # ------------------------------------------------------------ running
    @on(Input.Submitted, "#sql-input")
    def submitted(self, event: Input.Submitted) -> None:
        sql = event.value.strip()
        if not sql:
            return
        self.atlas_app.remember_sql(sql)
        self.history_pos = None
        self.sql, self.row_offset = sql, 0
        self.start()

    def start(self) -> None:
        self.generation += 1
        self.query_one("#sql-status", Static).update("running… (escape stops it)")
        self.run_query(self.generation, self.sql, self.row_offset)

    @work(thread=True, exclusive=True, group="sql")
    def run_query(self, generation: int, sql: str, offset: int) -> None:
        t0 = time.perf_counter()
        try:
            with self.atlas_app.source.open() as atlas:
                self.running = atlas.conn
                try:
                    cols, rows, more = sqlmod.run_page(atlas, sql, offset=offset, limit=PAGE)
                finally:
                    self.running = None
        except AtlasError as e:  # bad SQL, refused, stopped, damaged: one line, inline
            self.post_message(QueryFailed(generation, sql, str(e)))
            return
        except Exception as e:  # e.g. the file vanished: still inline, never a crash
            self.post_message(QueryFailed(generation, sql, f"{type(e).__name__}: {e}"))
            return
        self.post_message(QueryDone(generation, sql, cols, rows, offset, more, time.perf_counter() - t0))

    @on(QueryDone)
    def done(self, msg: QueryDone) -> None:
        if msg.generation != self.generation:
            return
        self.error = None
        self.query_one("#sql-error").display = False
        table = self.query_one("#sql-results", DataTable)
        table.clear(columns=True)
        self.columns = msg.columns
        for c in msg.columns:
            table.add_column(c)
        for r in msg.rows:
            table.add_row(*(fmt(v) if isinstance(v, float) else ("NULL" if v is None else v) for v in r))
        self.row_offset, self.more = msg.offset, msg.more
        first, last = msg.offset + 1, msg.offset + len(msg.rows)
        span = f"rows {first:,}–{last:,}" if msg.rows else "no rows"
        nav = " · ctrl+n next page" if msg.more else ""
        nav += " · ctrl+b previous" if msg.offset else ""
        took = f" · {msg.seconds * 1000:.0f} ms" if self.atlas_app.show_timings else ""
        self.query_one("#sql-status", Static).update(f"{span}{took}{nav} · ctrl+o export")

    @on(QueryFailed)
    def failed(self, msg: QueryFailed) -> None:
        if msg.generation != self.generation:
            return
        self.error = msg.error
        err = self.query_one("#sql-error", Static)
        err.update(f"error: {msg.error}")
        err.display = True
        self.query_one("#sql-status", Static).update("the query failed; the previous results are kept below")

    # ------------------------------------------------------------ actions
    def action_page(self, step: int) -> None:
        if not self.sql:
            return
        if step > 0 and not self.more:
            self.notify("this is the last page")
            return
        if step < 0 and self.row_offset == 0:
            return
        self.row_offset = max(0, self.row_offset + step * PAGE)
        self.start()

    def action_cancel_or_back(self) -> None:
        conn = self.running
        if conn is not None:
            conn.interrupt()  # thread-safe: the worker's query stops with "interrupted"
        else:
            self.atlas_app.action_back()

    def action_focus_input(self) -> None:
        self.set_focus(self.query_one("#sql-input", Input))  # now, not on the next loop turn

    def action_export(self) -> None:
        if not self.sql or self.error:
            self.notify("run a query first", severity="warning")
            return
        sql = self.sql

        def chosen(path: str | None) -> None:
            if path:
                self.export_to(sql, Path(path).expanduser())

        self.app.push_screen(ExportDialog(str(Path.cwd() / "query.csv")), chosen)

    @work(thread=True, exclusive=True, group="export")
    def export_to(self, sql: str, path: Path) -> None:
        n = self.read("export", lambda a: sqlmod.export(a, sql, path))
        if n is not None:
            self.app.call_from_thread(self.notify, f"wrote {n:,} rows to {path}")

    def on_key(self, event) -> None:
        """↑/↓ in the query box walk the history, newest first."""
        inp = self.query_one("#sql-input", Input)
        if not inp.has_focus or event.key not in ("up", "down"):
            return
        hist = self.atlas_app.sql_history
        if not hist:
            return
        if event.key == "up":
            self.history_pos = len(hist) - 1 if self.history_pos is None else max(0, self.history_pos - 1)
        elif self.history_pos is not None:
            self.history_pos += 1
            if self.history_pos >= len(hist):
                self.history_pos = None
        inp.value = hist[self.history_pos] if self.history_pos is not None else ""
        inp.cursor_position = len(inp.value)
        event.stop()
