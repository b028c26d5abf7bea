"""Which schema objects of a file are sae-atlas's own, checked before any query runs.

A file from a stranger can carry a trigger that empties tables on the next
label write, or a view named ``saes`` that runs a recursive CTE. So every open
compares the file's ``sqlite_master`` with what sae-atlas defines: the
statements of ``schema_sql()``, and every object any older version had
(``atlas.migrations.version_objects``: the frozen version-1 schema with each
migration run on it, so a migration that is a function is covered too; never
listed by hand, so a new schema version is covered when its migration lands). What happens to what does not match,
per kind of object:

========================  =====================================================
a table sae-atlas reads   must be an ordinary table (not a view or virtual
                          table) with sae-atlas's columns and foreign keys;
                          otherwise every command refuses the file, naming it
its FTS5 tables           must be the same ``CREATE VIRTUAL TABLE``; their
                          shadow tables ordinary tables; otherwise refused
a trigger                 must be one sae-atlas defines, word for word; any
                          other is named and every *write* is refused (reads
                          never fire triggers, so reading goes on)
a view sae-atlas defines  if changed, *safe mode*: sae-atlas's own commands
                          never read views, and the SQL engine (``sql``, the
                          TUI console) shadows it with sae-atlas's definition
                          and says so
anything else             other tables, views and indexes are read past;
                          ``validate`` lists them
========================  =====================================================

A file at the current version whose object texts equal the derived ones (any
atlas this sae-atlas wrote) passes on string comparison alone: the check costs
one read of ``sqlite_master``. Texts that differ (an older version, a
migrated table whose ``ALTER TABLE`` rewrote its text) are compared by
structure: columns from ``PRAGMA table_xinfo`` and foreign keys, against a
scratch in-memory database built from ``schema_sql()``.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from dataclasses import dataclass, field

from atlas.errors import ForeignSchema
from atlas.migrations import MIGRATIONS, SCHEMA_VERSION, schema_sql, version_objects

# Tables FTS5 creates beside a virtual table; SQLite writes their text, so only their kind is checked.
FTS5_SHADOW_SUFFIXES = ("data", "idx", "content", "docsize", "config")

_HEAD = re.compile(
    r"^CREATE\s+(?:TEMP\s+|TEMPORARY\s+)?(UNIQUE\s+)?(TABLE|INDEX|VIEW|TRIGGER|VIRTUAL\s+TABLE)\s+"
    r"(IF\s+NOT\s+EXISTS\s+)?([\"`\[]?)(\w+)[\"`\]]?",
    re.I,
)


@dataclass(frozen=True)
class Definition:
    kind: str  # table | virtual | index | view | trigger
    name: str
    stored: str  # the text SQLite keeps in sqlite_master for this statement


@dataclass(frozen=True)
class Expected:
    """What sae-atlas defines: the current schema's objects, and every text any version gave a name."""

    current: dict[str, Definition]  # name -> definition in schema_sql()
    known_texts: dict[str, frozenset[str]]  # name -> normalised texts from schema_sql() and every migration
    kinds: dict[str, frozenset[str]]  # name -> kinds it has had
    added_columns: dict[str, frozenset[str]]  # table -> columns a migration adds with ALTER TABLE
    shadow: dict[str, str]  # FTS5 shadow table name -> its virtual table


@dataclass
class SchemaReport:
    """What the check found. ``refused``: no command may use the file; ``write_refused``: no write may."""

    refused: list[str] = field(default_factory=list)
    write_refused: list[str] = field(default_factory=list)
    changed_views: list[str] = field(default_factory=list)
    other_objects: list[str] = field(default_factory=list)
    changed_triggers: list[str] = field(default_factory=list)  # sae-atlas's trigger names, other bodies

    def raise_if_refused(self, path: object, *, writing: bool, replaced: frozenset[str] = frozenset()) -> None:
        """ForeignSchema naming the first problems; ``replaced``: trigger names the caller drops before any write
        (a migration that redefines a trigger of an older version)."""
        forgiven = {f"trigger {n} on " for n in self.changed_triggers if n in replaced}
        write = [w for w in self.write_refused if not any(w.startswith(f) for f in forgiven)]
        problems = self.refused + (write if writing else [])
        if problems:
            what = "a write to it" if writing and not self.refused else "it"
            raise ForeignSchema(
                f"{path}: schema objects sae-atlas did not define, so it refuses {what}: "
                + "; ".join(problems[:3])
                + (f"; and {len(problems) - 3} more (`sae-atlas validate` lists them)" if len(problems) > 3 else "")
            )


# ------------------------------------------------------------------ what sae-atlas defines
def split_statements(sql: str) -> list[str]:
    """Complete statements of a script, each without its leading comments and final ';'."""
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if line.rstrip().endswith(";") and sqlite3.complete_statement(buf):
            out.append(_strip_statement(buf))
            buf = ""
    if buf.strip() and _strip_statement(buf):
        out.append(_strip_statement(buf))
    return [s for s in out if s]


def _strip_statement(s: str) -> str:
    s = s.strip()
    while s.startswith("--") or s.startswith("/*"):
        end = s.find("\n") if s.startswith("--") else s.find("*/") + 1
        s = s[end + 1 :].lstrip() if end > 0 else ""
    return s.rstrip().rstrip(";").rstrip()


def parse_definition(statement: str) -> Definition | None:
    """The object a CREATE statement makes, with the text SQLite will store for it (None: not a CREATE)."""
    m = _HEAD.match(statement)
    if not m:
        return None
    kind = m.group(2).lower()
    kind = "virtual" if kind.startswith("virtual") else kind
    stored = statement
    if m.group(3):  # SQLite drops IF NOT EXISTS from the stored text, and nothing else
        stored = statement[: m.start(3)] + statement[m.end(3) :]
    return Definition(kind, m.group(5), stored)


_ADD_COLUMN = re.compile(r"^ALTER\s+TABLE\s+[\"`\[]?(\w+)[\"`\]]?\s+ADD\s+(?:COLUMN\s+)?[\"`\[]?(\w+)", re.I)
Migrations = tuple[tuple[int, str, "str | None"], ...]


def expected(migrations: Migrations | None = None) -> Expected:
    """What sae-atlas defines, from ``schema_sql()`` and ``migrations`` (default: atlas.migrations.MIGRATIONS)."""
    return _expected(tuple(MIGRATIONS) if migrations is None else tuple(migrations))


@functools.lru_cache(maxsize=4)
def _expected(migrations: Migrations) -> Expected:
    current: dict[str, Definition] = {}
    for st in split_statements(schema_sql()):
        d = parse_definition(st)
        if d is not None:
            current[d.name] = d
    texts: dict[str, set[str]] = {n: {normalize_sql(d.stored)} for n, d in current.items()}
    kinds: dict[str, set[str]] = {n: {d.kind} for n, d in current.items()}
    added: dict[str, set[str]] = {}
    for type_, name, _, sql in (row for rows in version_objects().values() for row in rows):
        if sql:  # every object any version defined, built by running the real migrations
            kind = _kind_of(type_, sql)
            texts.setdefault(name.lower(), set()).add(normalize_sql(sql))
            kinds.setdefault(name.lower(), set()).add(kind)
    for _, _, sql in migrations:
        if not isinstance(sql, str):
            continue  # a function step: what it makes is in version_objects()
        for st in split_statements(sql):
            d = parse_definition(st)
            if d is not None:
                texts.setdefault(d.name, set()).add(normalize_sql(d.stored))
                kinds.setdefault(d.name, set()).add(d.kind)
            elif m := _ADD_COLUMN.match(st):
                added.setdefault(m.group(1), set()).add(m.group(2))
    return Expected(
        current=current,
        known_texts={n: frozenset(t) for n, t in texts.items()},
        kinds={n: frozenset(k) for n, k in kinds.items()},
        added_columns={t: frozenset(c) for t, c in added.items()},
        shadow={f"{vt}_{sfx}": vt for vt, k in kinds.items() if "virtual" in k for sfx in FTS5_SHADOW_SUFFIXES},
    )


def view_definitions() -> dict[str, str]:
    """name -> CREATE VIEW text of every view of the current schema (for the SQL engine's shadowing)."""
    return {n: d.stored for n, d in expected().current.items() if d.kind == "view"}


_TOKEN = re.compile(r"\s+|--[^\n]*|/\*.*?(?:\*/|$)|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`|\[[^\]]*\]|\w+|.", re.S)


def normalize_sql(sql: str) -> str:
    """Text of a statement with comments, spacing, case and identifier quotes made uniform."""
    out = []
    for tok in _TOKEN.findall(sql):
        if tok.isspace() or tok.startswith("--") or tok.startswith("/*"):
            continue
        if tok[0] in '"`[' and re.fullmatch(r"[\"`\[]\w+[\"`\]]", tok):
            tok = tok[1:-1]
        out.append(tok if tok.startswith("'") else tok.lower())
    text = " ".join(out)
    return re.sub(r"^create (unique )?(table|index|view|trigger|virtual table) if not exists ", r"create \1\2 ", text)


# ------------------------------------------------------------------ the check
def _kind_of(type_: str, sql: str | None) -> str:
    if type_ == "table" and sql and re.match(r"\s*CREATE\s+VIRTUAL\s", sql, re.I):
        return "virtual"
    return type_


def check_schema(
    conn: sqlite3.Connection,
    version: int,
    rows: list[tuple] | None = None,
    *,
    schema_version: int = SCHEMA_VERSION,
    migrations: Migrations | None = None,
) -> SchemaReport:
    """Compare the file on ``conn`` (at schema ``version``) with what sae-atlas defines.

    ``rows`` are ``(type, name, tbl_name, sql)`` of sqlite_master when the caller already read
    them; ``schema_version`` and ``migrations`` default to those of atlas.migrations.
    """
    if rows is None:
        rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    exp = expected(migrations)
    rep = SchemaReport()
    current = version == schema_version
    seen: set[str] = set()
    slow_tables: list[str] = []
    for type_, name, tbl_name, sql in rows:
        key = str(name).lower()  # SQLite's names are case-blind: SAES is saes
        seen.add(key)
        want = exp.current.get(key)
        if want is not None and sql == want.stored:
            continue  # the common case: byte-for-byte what this sae-atlas writes
        if key.startswith("sqlite_"):
            continue  # SQLite's own: statistics, autoindexes, sequence
        kind = _kind_of(type_, sql)
        _classify(key, kind, sql, str(tbl_name), exp, rep, slow_tables)
    if slow_tables:
        _compare_tables(conn, slow_tables, current, exp, rep)
    if current:
        for name, d in exp.current.items():
            if name not in seen and d.kind in ("table", "virtual"):
                rep.refused.append(f"table {name} is missing")
            elif name not in seen and d.kind == "trigger":
                rep.write_refused.append(f"trigger {name} is missing (label search would miss new labels)")
    return rep


def _classify(
    name: str, kind: str, sql: str | None, tbl_name: str, exp: Expected, rep: SchemaReport, slow_tables: list[str]
) -> None:
    """Where one object that is not byte-for-byte sae-atlas's goes in the report (see the module's table)."""
    if name in exp.shadow:
        if kind != "table":
            rep.refused.append(f"{name} (the full-text index of {exp.shadow[name]}) is a {kind}, not a table")
        return
    known_kinds = exp.kinds.get(name)
    if known_kinds is None:
        if kind == "trigger":
            rep.write_refused.append(f"trigger {name} on {tbl_name}")
        else:
            rep.other_objects.append(f"{_kind_word(kind)} {name}")
        return
    if kind not in known_kinds:
        what = "/".join(sorted(_kind_word(k) for k in known_kinds))
        msg = f"{name} is a {_kind_word(kind)}, not the {what} sae-atlas defines"
        if "view" in known_kinds:
            rep.changed_views.append(name)  # sae-atlas reads no view itself; the SQL engine shadows it
        elif kind == "trigger" or "trigger" in known_kinds:
            rep.write_refused.append(msg)
        else:
            rep.refused.append(msg)
        return
    if kind == "table":
        slow_tables.append(name)
        return
    if normalize_sql(sql or "") in exp.known_texts.get(name, frozenset()):
        return
    if kind == "trigger":
        rep.write_refused.append(f"trigger {name} on {tbl_name} is not sae-atlas's definition")
        rep.changed_triggers.append(name)
    elif kind == "view":
        rep.changed_views.append(name)
    elif kind == "virtual":
        rep.refused.append(f"virtual table {name} is not sae-atlas's definition")
    # an index of ours with another definition changes speed, not answers: read past


def _kind_word(kind: str) -> str:
    return {"virtual": "virtual table"}.get(kind, kind)


@functools.lru_cache(maxsize=1)
def _reference() -> sqlite3.Connection:
    """A scratch in-memory database holding the current schema, for structural comparison."""
    ref = sqlite3.connect(":memory:", check_same_thread=False)
    ref.executescript(schema_sql())
    return ref


def _structure(conn: sqlite3.Connection, table: str) -> tuple[dict[str, tuple], set[tuple]]:
    cols = {
        r[1]: (str(r[2]).upper(), r[3], r[5], r[6])  # type, notnull, pk, hidden (generated)
        for r in conn.execute("SELECT * FROM pragma_table_xinfo(?)", (table,))
    }
    fks = {tuple(r[2:7]) for r in conn.execute("SELECT * FROM pragma_foreign_key_list(?)", (table,))}
    return cols, fks


def _compare_tables(
    conn: sqlite3.Connection, names: list[str], current: bool, exp: Expected, rep: SchemaReport
) -> None:
    ref = _reference()
    for name in names:
        want_cols, want_fks = _structure(ref, name)
        have_cols, have_fks = _structure(conn, name)
        if not want_cols:  # a table only an older version had: its structure is not known here
            continue
        generated = [c for c, v in have_cols.items() if v[3]]
        odd = [c for c, v in have_cols.items() if c in want_cols and v != want_cols[c]]
        extra = [c for c in have_cols if c not in want_cols and c not in exp.added_columns.get(name, ())]
        missing = [c for c in want_cols if c not in have_cols] if current else []
        problems = []
        if generated:
            problems.append("generated column " + ", ".join(generated))
        if odd:
            problems.append("column " + ", ".join(odd) + " declared otherwise")
        if extra:
            problems.append("extra column " + ", ".join(extra))
        if missing:
            problems.append("no column " + ", ".join(missing))
        if not have_fks <= want_fks or (current and have_fks != want_fks):
            problems.append("other foreign keys")
        if problems:
            rep.refused.append(f"table {name}: " + "; ".join(problems))
