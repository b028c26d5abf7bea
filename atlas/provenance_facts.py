"""The build provenance as the facts a person reads first: which model from where, which SAEs,
when and with what, with which settings and verdict thresholds.

A pure function over the provenance dict (``atlas_info.provenance`` parsed: atlas/provenance.py
checks it); ``sae-atlas info`` and the browser's overview both print these lines, and the JSON
stays one flag away (``info --provenance`` / ``--json``). The dict comes from a file, so nothing
here assumes a key is present or of the right type, and every value is clipped to one short line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

MAX_TEXT = 200  # characters per fact


@dataclass(frozen=True)
class Fact:
    label: str  # model | SAEs | built | passes | settings | verdicts | folding | origin
    text: str


def _d(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _s(x: Any) -> str:
    return " ".join(str(x).split()) if x is not None else ""


def _clip(text: str, n: int = MAX_TEXT) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _join(parts: list[str], sep: str = " · ") -> str:
    return sep.join(p for p in parts if p)


def _model(m: dict) -> str:
    sha = _s(m.get("sha256"))
    return _join(
        [
            _s(m.get("source")) + (f" ({_s(m.get('source_kind'))})" if m.get("source_kind") else ""),
            f"read as {_s(m.get('dtype'))}" if m.get("dtype") else "",
            f"sha256 {sha[:12]}…" if len(sha) > 12 else (f"sha256 {sha}" if sha else ""),
        ]
    )


def _saes(saes: list) -> str:
    rows = [_d(s) for s in saes]
    formats = sorted({_s(s.get("source_format")) for s in rows if s.get("source_format")})
    sources = [_s(s.get("source")) for s in rows if s.get("source")]
    head = f"{len(rows)}" + (f" ({', '.join(formats)})" if formats else "")
    if not sources:
        return head
    common = os.path.commonpath(sources) if len(sources) > 1 and all("/" in s for s in sources) else ""
    if common and common not in sources:
        return f"{head} from {common}/: " + ", ".join(s[len(common) + 1 :] for s in sources)
    return f"{head} from " + ", ".join(sources)


def _built(prov: dict, created_at: str | None, version: str | None) -> str:
    versions = _d(prov.get("versions"))
    build = _d(prov.get("build"))
    when = _s(created_at).replace("T", " ").replace("+00:00", " UTC")
    version = version or versions.get("sae_atlas")
    device = _s(build.get("device"))
    tools = [f"{k} {_s(versions[k])}" for k in ("torch", "transformers") if versions.get(k)]
    return _join([when, f"sae-atlas {_s(version)}" if version else "", f"on {device}" if device else "", *tools])


def _settings(cfg: dict) -> str:
    parts = []
    if "top_k" in cfg:
        parts.append(f"top {_s(cfg['top_k'])} tokens per list")
    if "fold_norms" in cfg:
        parts.append("norm gains folded" if cfg["fold_norms"] else "raw W_U / W_E (no norm folding)")
    keep = cfg.get("store_percentile") or cfg.get("percentile")
    if keep is not None:
        n = f" of {_s(cfg['n_random'])}" if "n_random" in cfg else ""
        parts.append(f"heads ≥ P{_s(keep)}{n} random directions")
    for key, what in (("qk_k", "QK"), ("ov_k", "OV")):
        if key in cfg:
            cap = cfg.get(key.replace("_k", "_cap"))
            parts.append(f"{what} {_s(cfg[key])}/head" + (f" ≤ {_s(cap)}/feature" if cap else ""))
    for key, what in (("neighbour_k", "neighbours"), ("flow_k", "flow")):
        if key in cfg:
            parts.append(f"{what} {_s(cfg[key])}")
    if "seed" in cfg:
        parts.append(f"seed {_s(cfg['seed'])}")
    return _join(parts)


def _kv(x: Any) -> str:
    if isinstance(x, dict):
        return ", ".join(f"{_s(k)} {_s(v)}" for k, v in x.items())
    if isinstance(x, list):
        return ", ".join(map(_s, x))
    return _s(x)


def _verdicts(criteria: dict) -> str:
    """``du_top1_z >= 6.27 predicts tokens, ee_top1_z >= 6.346 reads tokens (99th percentile over 1024 ...)``."""
    from atlas.read import describe_criterion

    rules = []  # (rule, its baseline in brackets or "")
    for col in ("predicts_tokens", "reads_tokens"):
        if col in criteria:
            rule, _, tail = _s(describe_criterion(criteria[col])).partition(" (")
            rules.append((f"{rule} {col.replace('_', ' ')}", tail))
    tails = {tail for _, tail in rules}
    if len(rules) > 1 and len(tails) == 1 and "" not in tails:  # one baseline for both: say it once
        return ", ".join(rule for rule, _ in rules) + f" ({tails.pop()}"
    return "; ".join(rule + (f" ({tail}" if tail else "") for rule, tail in rules)


def provenance_facts(
    provenance: Any, *, created_at: str | None = None, sae_atlas_version: str | None = None
) -> list[Fact]:
    """The provenance as a few labelled lines, most telling first; only what the provenance holds."""
    prov = _d(provenance)
    build = _d(prov.get("build"))
    cfg = _d(build.get("config"))
    facts: list[Fact] = []

    def add(label: str, text: str) -> None:
        text = _s(text)  # one line, whatever the file held
        if text:
            facts.append(Fact(label, _clip(text)))

    add("model", _model(_d(prov.get("model"))))
    if isinstance(prov.get("saes"), list):
        add("SAEs", _saes(prov["saes"]))
    add("built", _built(prov, created_at, sae_atlas_version))
    passes = cfg.get("passes")
    if isinstance(passes, list | tuple):
        add("passes", " ".join(_s(p) for p in passes))
    add("settings", _settings(cfg))
    add("verdicts", _verdicts(_d(prov.get("criteria"))))
    example = _d(prov.get("example"))
    if example.get("recipe"):
        add("recipe", _s(example["recipe"]))
    exported = _d(prov.get("exported"))
    if exported:
        add("origin", f"exported from {_s(exported.get('from'))}: {_kv(exported.get('saes') or [])}")
    merged = prov.get("merged")
    if merged:
        add("origin", f"merged from {_kv(_d(merged).get('inputs', merged))}")
    if "synthetic" in prov:
        add("origin", f"synthetic atlas, generated rather than built from weights ({_kv(prov['synthetic'])})")
    return facts


def facts_text(facts: list[Fact], indent: str = "  ") -> str:
    """The facts as aligned lines, for a terminal."""
    width = max((len(f.label) for f in facts), default=0)
    return "\n".join(f"{indent}{f.label:<{width}}  {f.text}" for f in facts)
