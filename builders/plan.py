"""The plan of a build: the SAEs' atlas names and every unit of work, in the order they run.

A unit is one step of one pass over one chunk of ``unit_size`` features of
one SAE (or the whole SAE, for a step that needs every feature at once).
Passes come in registry order, each over its targets in the order it gives
them; that order decides every autoincrement id of the atlas, so two builds,
a resumed one and a sharded one all write the same rows.
"""

from __future__ import annotations

from typing import Any

from atlas.names import default_sae_name
from builders.errors import BuildError
from builders.passes import registry
from builders.passes.base import Context, Unit
from builders.passes.common import chunks
from builders.settings import BuildConfig
from builders.weights import ModelWeights, SAEWeights


def sae_names(saes: list[SAEWeights], given: tuple[str | None, ...] | None = None) -> list[str]:
    """Atlas names: given ones, else ``L12.res``; collisions get the width, then a counter."""
    given = tuple(given or ())
    base = [
        (given[i] if i < len(given) and given[i] else default_sae_name(s.layer, s.site, s.atlas_kind))
        for i, s in enumerate(saes)
    ]
    names: list[str] = []
    for i, (name, s) in enumerate(zip(base, saes, strict=True)):
        explicit = i < len(given) and given[i]
        if not explicit and base.count(name) > 1:
            name = f"{name}.{s.d_sae // 1024}k" if s.d_sae % 1024 == 0 else f"{name}.{s.d_sae}"
        candidate, n = name, 2
        while candidate in names:
            candidate, n = f"{name}.{n}", n + 1
        names.append(candidate)
    return names


def check_settings(cfg: BuildConfig, names: list[str]) -> None:
    """Refuse settings that cannot fit these SAEs (a QK pair naming a missing SAE), before any weights load."""
    for p in registry().values():
        if p.name in cfg.passes and p.check is not None:
            p.check(cfg, names)


def units(ctx: Context) -> list[Unit]:
    """Every unit of the build ``ctx`` describes, in the order they run."""
    check_settings(ctx.cfg, ctx.names)
    out: list[Unit] = []
    for p in registry().values():
        if p.name not in ctx.cfg.passes:
            continue
        for t in p.targets(ctx):
            if (t.other is None) != (p.reads == "one"):
                raise BuildError(f"pass {p.name} reads {p.reads} SAE(s) but planned {t}")
            d_sae = ctx.saes[t.sae].d_sae
            for step in p.steps:
                key = p.unit_key(step, t, ctx.names)
                spans = [(0, d_sae)] if step.whole else chunks(0, d_sae, ctx.cfg.unit_size)
                out.extend(Unit(p.name, step.name, key, t.sae, t.other, s, e) for s, e in spans)
    return out


def plan_units(model: ModelWeights, saes: list[SAEWeights], names: list[str], cfg: BuildConfig) -> list[Unit]:
    """Every unit of the build, in the order they run."""
    return units(Context(model, saes, names, cfg))


def plan_rows(plan: list[Unit], names: list[str]) -> list[dict[str, Any]]:
    """The plan as a shard records it, in run order: each unit with the rows the merge must move for it.

    ``edges`` / ``labels``: the edge kind or label source the unit writes (rows
    with autoincrement ids, re-inserted unit by unit in this order).
    """
    passes = registry()
    return [
        {
            "unit": u.key,
            "sae": names[u.sae],
            "other": None if u.other is None else names[u.other],
            "start": u.start,
            "end": u.end,
            "edges": passes[u.pass_name].edge_kind if _fills(u, "edges") else None,
            "labels": passes[u.pass_name].label_source if _fills(u, "labels") else None,
            **({"reversed": True} if passes[u.pass_name].edges_reversed else {}),  # edges other -> unit's SAE
        }
        for u in plan
    ]


def _fills(u: Unit, table: str) -> bool:
    p = registry()[u.pass_name]
    return p.step(u.step).fills(p, table)


def check_shard(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    """``(I, N)`` with 0 <= I < N, or None."""
    if shard is None:
        return None
    index, count = (int(x) for x in shard)
    if count < 1 or not 0 <= index < count:
        raise BuildError(f"shard {index}/{count}: need 0 <= I < N (shards are numbered from 0)")
    return index, count
