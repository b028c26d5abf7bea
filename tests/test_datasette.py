"""Datasette and sqlite-utils open an atlas as their own: tables, views and the labels' full-text search.

The real ``datasette`` serves a built atlas read-only (``--immutable``) on 127.0.0.1; the test reads
the features table, ``features_view`` and a label search (``?_search=``) through its JSON API, then
stops it. The real ``sqlite-utils search`` runs on the same file.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import query

START_DEADLINE_S = 90  # a loaded 2-core machine can take a while to import datasette


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read().decode("utf-8"))


@pytest.fixture
def datasette(synthetic_atlas: Path):
    pytest.importorskip("datasette")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "datasette", "serve", "--immutable", str(synthetic_atlas),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_DEADLINE_S
    try:
        while True:
            try:
                _get(f"{base}/-/versions.json")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode("utf-8", "replace") if proc.stdout else ""
                    pytest.fail(f"datasette did not start (exit {proc.poll()}): {out[-2000:]}")
                time.sleep(0.2)
        yield base + "/" + synthetic_atlas.stem
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def test_datasette_serves_tables_views_and_label_search(datasette: str, synthetic_atlas: Path) -> None:
    features = _get(f"{datasette}/features.json?_shape=objects&_size=5")
    assert len(features["rows"]) == 5 and {"feature_id", "du_top1_z", "sae_id"} <= features["rows"][0].keys()
    view = _get(f"{datasette}/features_view.json?_shape=objects&_size=5")
    assert len(view["rows"]) == 5 and view["rows"][0]["name"].count("/") == 1
    found = _get(f"{datasette}/labels.json?_search=punctuation&_shape=objects&_size=max")
    want = query(synthetic_atlas, "SELECT rowid FROM labels_fts WHERE labels_fts MATCH 'punctuation' ORDER BY rowid")
    assert sorted(r["label_id"] for r in found["rows"]) == [r[0] for r in want] and want
    assert all("punctuation" in r["text"] for r in found["rows"])
    # the table page offers the search box only when Datasette detected the FTS table as the labels' own
    with urllib.request.urlopen(f"{datasette}/labels", timeout=30) as r:
        assert 'name="_search"' in r.read().decode("utf-8")


def test_sqlite_utils_search_finds_labels(synthetic_atlas: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "sqlite_utils", "search", str(synthetic_atlas), "labels", "punctuation", "--limit", "500"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    n = query(synthetic_atlas, "SELECT COUNT(*) FROM labels_fts WHERE labels_fts MATCH 'punctuation'")[0][0]
    assert len(rows) == n > 0 and all("punctuation" in row["text"] for row in rows)
