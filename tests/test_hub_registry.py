"""Names that resolve: SAELens registry entries and hf:// references, read from a Hugging Face
cache laid out on disk exactly as huggingface_hub writes it (tests cannot reach the hub), with
HF_HUB_OFFLINE=1; the one-line answers for unknown names, missing cache entries and corrupt
downloads; only the needed files fetched."""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from builders import hub, registry
from builders.errors import CorruptWeights, LoadError
from builders.saes import load_sae
from tests.builders_fixtures import (
    publish_to_hub_cache,
    write_circuit_tracer_clt,
    write_circuit_tracer_transcoders,
    write_gemma_scope_2,
    write_gemma_scope_sae,
    write_goodfire,
    write_llama_scope_sae,
    write_saelens_sae,
    write_sparsify,
)

SHARED_REGISTRY = (
    Path(__file__).resolve().parents[1].parent.parent / "shared" / "data" / "saelens" / "pretrained_saes.yaml"
)
COMMIT = "c0ffee" + "0" * 34


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """An empty hub cache, offline, the shipped registry; nothing from the user's home is read."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAE_ATLAS_CACHE", str(tmp_path / "sae-atlas-cache"))
    monkeypatch.setenv(registry.ENV_PATH, str(registry.SHIPPED))
    return cache


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def same(a, b, tol=0.0):
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= tol


# ------------------------------------------------------------------------ the registry


def test_shipped_registry_is_saelens_6_54_12():
    import hashlib

    assert registry.SHIPPED.is_file() and (registry.SHIPPED.parent / "LICENSE").is_file()
    assert "MIT License" in (registry.SHIPPED.parent / "LICENSE").read_text()
    digest = hashlib.sha256(registry.SHIPPED.read_bytes()).hexdigest()
    assert digest == "bea73bf39c2a345ce03fca3d9d44e133085e9ff2aea74c8ae5b26de0819c96d2"
    if SHARED_REGISTRY.is_file():
        assert SHARED_REGISTRY.read_bytes() == registry.SHIPPED.read_bytes()


@pytest.mark.parametrize(
    "name,repo,path,fmt,neuronpedia",
    [
        ("gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical", "google/gemma-scope-2b-pt-res",
         "layer_12/width_16k/average_l0_82", "gemma_scope", "gemma-2-2b/12-gemmascope-res-16k"),
        ("gemma-scope-2b-pt-res-canonical:layer_12/width_16k/canonical", "google/gemma-scope-2b-pt-res",
         "layer_12/width_16k/average_l0_82", "gemma_scope", "gemma-2-2b/12-gemmascope-res-16k"),
        ("llama_scope_lxr_8x/l12r_8x", "fnlp/Llama3_1-8B-Base-LXR-8x", "Llama3_1-8B-Base-L12R-8x", "llama_scope",
         "llama3.1-8b/12-llamascope-res-32k"),
        ("gemma-scope-2b-pt-transcoders/layer_3/width_16k/average_l0_54", "google/gemma-scope-2b-pt-transcoders",
         "layer_3/width_16k/average_l0_54", "gemma_scope", "gemma-2-2b/3-gemmascope-transcoder-16k"),
        ("gemma-scope-2-270m-pt-transcoders-all/layer_5_width_16k_l0_big_affine", "google/gemma-scope-2-270m-pt",
         "transcoder_all/layer_5_width_16k_l0_big_affine", "gemma_scope_2", None),
        ("mwhanna-qwen3-4b-transcoders:layer_10", "mwhanna/qwen3-4b-transcoders", "layer_10.safetensors",
         "circuit_tracer", "qwen3-4b/10-transcoder-hp"),
        ("mntss-gemma-2-2b-2.5m-clt-as-per-layer/layer_3", "mntss/clt-gemma-2-2b-2.5M", "3", "circuit_tracer_clt",
         "gemma-2-2b/3-clt-hp"),
        ("goodfire-llama-3.1-8b-instruct/layer_19", "Goodfire/Llama-3.1-8B-Instruct-SAE-l19",
         "Llama-3.1-8B-Instruct-SAE-l19.pth", "goodfire", "llama3.1-8b-it/19-resid-post-gf"),
        ("gpt2-small-res-jb/blocks.8.hook_resid_pre", "jbloom/GPT2-Small-SAEs-Reformatted", "blocks.8.hook_resid_pre",
         "saelens", "gpt2-small/8-res-jb"),
    ],
)  # fmt: skip
def test_registry_resolves_real_entries(hub_env, name, repo, path, fmt, neuronpedia):
    e = registry.resolve(name)
    assert (e.repo_id, e.path, e.fmt, e.neuronpedia_id) == (repo, path, fmt, neuronpedia)
    assert "shipped" not in e.registry or str(registry.SHIPPED) in e.registry


def test_registry_unknown_names_give_the_nearest(hub_env):
    with pytest.raises(
        LoadError, match="not a release of the SAELens registry; nearest releases: gemma-scope-2b-pt-res"
    ) as e:
        load_sae("gemma-scope-2b-pt-rez/layer_12/width_16k/canonical")
    one_line(e)
    with pytest.raises(
        LoadError, match="has no SAE 'layer_12/width_16k/canonicl'; nearest: layer_12/width_16k/canonical"
    ) as e:
        load_sae("gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonicl")
    one_line(e)
    with pytest.raises(LoadError, match=r"format \(qwen_scope\) is not one sae-atlas reads yet.*hf://Qwen/") as e:
        load_sae("qwen-scope-3-1.7b-base-w32k-l50/layer3")
    one_line(e)


def test_registry_location_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(registry.ENV_PATH, raising=False)
    monkeypatch.setenv("SAE_ATLAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "sae_lens" not in p])
    if registry.installed_saelens_registry() is None:  # the shipped copy when nothing else is there
        assert registry.registry_location() == (registry.SHIPPED, "shipped with sae-atlas (sae-lens 6.54.12)")
    # a kept copy (sae-atlas registry update) wins over the shipped one
    kept = registry.cache_copy()
    kept.parent.mkdir(parents=True)
    kept.write_text("r1:\n  repo_id: org/kept\n  saes:\n  - {id: a, path: p}\n")
    (kept.parent / "SOURCE.json").write_text(json.dumps({"version": "9.9.9"}))
    if registry.installed_saelens_registry() is None:
        assert registry.registry_location() == (kept, "sae-atlas registry update (sae-lens 9.9.9)")
    # an installed sae-lens wins, and is found without importing it (its __init__ would raise)
    pkg = tmp_path / "site" / "sae_lens"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('sae_lens must not be imported')\n")
    (pkg / "pretrained_saes.yaml").write_text("r2:\n  repo_id: org/installed\n  saes:\n  - {id: b, path: q}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path, origin = registry.registry_location()
    assert path == pkg / "pretrained_saes.yaml" and origin.startswith("installed sae-lens")
    assert registry.resolve("r2/b").repo_id == "org/installed" and "sae_lens" not in sys.modules
    # an explicit path wins over everything
    monkeypatch.setenv(registry.ENV_PATH, str(kept))
    assert registry.resolve("r1:a").repo_id == "org/kept"
    monkeypatch.setenv(registry.ENV_PATH, str(tmp_path / "missing.yaml"))
    with pytest.raises(LoadError, match="missing.yaml: no such file"):
        registry.resolve("r1:a")


def test_registry_update_from_a_wheel(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setenv("SAE_ATLAS_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_pip(cmd, **kw):  # what `pip download --no-deps sae-lens -d DIR` leaves in DIR
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "sae_lens-9.1.0-py3-none-any.whl", "w") as zf:
            zf.writestr("sae_lens/pretrained_saes.yaml", "rel:\n  repo_id: org/r\n  saes:\n  - {id: x, path: y}\n")
            zf.writestr("sae_lens-9.1.0.dist-info/licenses/LICENSE", "MIT License\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(registry.subprocess, "run", fake_pip)
    path, version = registry.update_registry()
    assert (
        version == "9.1.0" and path == registry.cache_copy() and calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    )
    assert (path.parent / "LICENSE").read_text() == "MIT License\n"
    assert registry.resolve("rel/x", registry=path).repo_id == "org/r"

    def broken_pip(cmd, **kw):
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "sae_lens-9.2.0-py3-none-any.whl", "w") as zf:
            zf.writestr("sae_lens/pretrained_saes.yaml", "[not, a, registry]\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(registry.subprocess, "run", broken_pip)
    with pytest.raises(LoadError, match="not a SAELens registry"):
        registry.update_registry()
    assert registry.resolve("rel/x", registry=path).repo_id == "org/r"  # the old copy is kept whole

    monkeypatch.setattr(
        registry.subprocess,
        "run",
        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution"),
    )
    with pytest.raises(LoadError, match="could not download sae-lens with pip: ERROR: No matching distribution"):
        registry.update_registry()


# ------------------------------------------------------------------------ hf:// from the cache


def _stage(tmp_path: Path, fmt: str) -> tuple[Path, str]:
    """A dictionary written into a staging repository; returns (repo folder, path inside it)."""
    repo = tmp_path / "remote" / fmt
    if fmt == "saelens":
        write_saelens_sae(repo / "blocks.1.hook_resid_post", architecture="jumprelu")
        return repo, "blocks.1.hook_resid_post"
    if fmt == "gemma_scope_2":
        folder, _ = write_gemma_scope_2(repo, kind="transcoder", affine=True)
        return repo, folder.relative_to(repo).as_posix()
    if fmt == "gemma_scope_2_file":
        folder, _ = write_gemma_scope_2(repo, kind="resid_post", all_layers=True)
        return repo, (folder.relative_to(repo) / "params.safetensors").as_posix()
    if fmt == "gemma_scope":
        path, _ = write_gemma_scope_sae(repo, release="gemma-scope-2b-pt-mlp", layer=1)
        return repo, path.parent.relative_to(repo).as_posix()
    if fmt == "circuit_tracer":
        write_circuit_tracer_transcoders(repo, n_layers=2)
        return repo, "layer_1.safetensors"
    if fmt == "circuit_tracer_clt":
        write_circuit_tracer_clt(repo, n_layers=3)
        return repo, "W_enc_1.safetensors"
    if fmt == "sparsify":
        write_sparsify(repo, hookpoint="layers.1.mlp", transcode=True)
        return repo, "layers.1.mlp"
    if fmt == "goodfire":
        write_goodfire(repo, name="Llama-3.1-8B-Instruct-SAE-l1.pth")
        return repo, "Llama-3.1-8B-Instruct-SAE-l1.pth"
    if fmt == "llama_scope":
        folder, _ = write_llama_scope_sae(repo, d_model=32, d_sae=64)
        return repo, folder.name
    raise AssertionError(fmt)


FORMATS = ["saelens", "gemma_scope_2", "gemma_scope_2_file", "gemma_scope", "circuit_tracer", "circuit_tracer_clt",
           "sparsify", "goodfire", "llama_scope"]  # fmt: skip


@pytest.mark.parametrize("fmt", FORMATS)
def test_hf_uri_loads_from_the_cache_offline(tmp_path, hub_env, fmt):
    repo, inside = _stage(tmp_path, fmt)
    local = load_sae(repo / inside)
    snap = publish_to_hub_cache(hub_env, "org/" + fmt.replace("_", "-"), repo, commit=COMMIT)
    uri = f"hf://org/{fmt.replace('_', '-')}/{inside}"
    for ref in (uri, uri + "@main", uri + "@" + COMMIT):
        d = load_sae(ref)
        assert d.source == f"hf://org/{fmt.replace('_', '-')}/{_loaded_path(inside, fmt)}@{COMMIT}", d.source
        assert (d.hook_name, d.kind, d.write_hooks, d.architecture) == (
            local.hook_name,
            local.kind,
            local.write_hooks,
            local.architecture,
        )
        same(d.W_enc, local.W_enc)
        same(d.W_dec, local.W_dec)
        assert d.sha256 == local.sha256  # the same bytes, checked against the blob names
    assert "read from hf://" in d.notes and snap.is_dir()


def _loaded_path(inside: str, fmt: str) -> str:
    """Which path the atlas records: the folder for folder formats, the weight file otherwise."""
    if fmt == "gemma_scope_2_file":
        return inside.rsplit("/", 1)[0]
    if fmt == "gemma_scope":
        return inside + "/params.npz"
    return inside


def test_registry_name_loads_from_the_cache(tmp_path, hub_env):
    """The shipped registry's entry, its files in the cache at the repo and path it names."""
    e = registry.resolve("gemma-scope-2b-pt-res-canonical/layer_1/width_16k/canonical")
    repo = tmp_path / "remote"
    path, t = write_gemma_scope_sae(repo / "x", release="", layer=1, l0=102)
    target = repo / "stage" / e.path
    target.mkdir(parents=True)
    shutil.copy(path, target / "params.npz")
    publish_to_hub_cache(hub_env, e.repo_id, repo / "stage", commit=COMMIT)
    for name in (
        "gemma-scope-2b-pt-res-canonical/layer_1/width_16k/canonical",
        "gemma-scope-2b-pt-res-canonical:layer_1/width_16k/canonical",
    ):
        d = load_sae(name)
        assert (d.release, d.sae_ref, d.neuronpedia_id) == (
            "gemma-scope-2b-pt-res-canonical",
            "layer_1/width_16k/canonical",
            "gemma-2-2b/1-gemmascope-res-16k",
        )
        assert d.source == f"hf://google/gemma-scope-2b-pt-res/layer_1/width_16k/average_l0_102/params.npz@{COMMIT}"
        assert (d.hook_name, d.source_format, d.architecture) == ("blocks.1.hook_resid_post", "gemma_scope", "jumprelu")
        assert d.notes.startswith("SAELens registry gemma-scope-2b-pt-res-canonical/layer_1/width_16k/canonical")
        assert d.meta["registry_model"] == "gemma-2-2b"
        same(d.W_enc, t["W_enc"])
        row = d.atlas_sae_fields(1)
        assert (row["release"], row["sae_ref"], row["neuronpedia_id"], row["source_format"]) == (
            d.release,
            d.sae_ref,
            d.neuronpedia_id,
            "gemma_scope",
        )
        assert row["notes"] == d.notes and "google/gemma-scope-2b-pt-res" in row["source"]


def test_registry_transcoder_and_clt_from_the_cache(tmp_path, hub_env):
    # mwhanna's Qwen3 transcoders have no config.yaml for some sizes: SAELens's hooks are used
    repo = tmp_path / "mw"
    write_circuit_tracer_transcoders(repo, n_layers=11, config={})
    publish_to_hub_cache(hub_env, "mwhanna/qwen3-4b-transcoders", repo, commit=COMMIT)
    tc = load_sae("mwhanna-qwen3-4b-transcoders/layer_10")
    assert (tc.kind, tc.hook_name, tc.out_hook_name, tc.neuronpedia_id) == (
        "transcoder",
        "blocks.10.mlp.hook_in",
        "blocks.10.hook_mlp_out",
        "qwen3-4b/10-transcoder-hp",
    )
    repo = tmp_path / "clt"
    write_circuit_tracer_clt(repo, n_layers=4)
    publish_to_hub_cache(hub_env, "mntss/clt-gemma-2-2b-2.5M", repo, commit=COMMIT)
    clt = load_sae("mntss-gemma-2-2b-2.5m-clt-as-per-layer/layer_3")
    assert (clt.kind, clt.layer, clt.write_layers, clt.sae_ref) == ("clt", 3, (3,), "layer_3")


def test_offline_and_not_cached(hub_env):
    with pytest.raises(
        LoadError,
        match=r"hf://google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/params.npz: "
        r"not in the Hugging Face cache .* HF_HUB_OFFLINE is set; run once online",
    ) as e:
        load_sae("gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical")
    one_line(e)
    with pytest.raises(LoadError, match="hf://org/nothing/folder: not in the Hugging Face cache") as e:
        load_sae("hf://org/nothing/folder")
    one_line(e)


def test_bad_hub_references(hub_env):
    for bad in ("hf://justone", "hf://org/repo/../etc", "hf://org/re po/x", "hf://org/repo/x@"):
        with pytest.raises(LoadError, match="hf://") as e:
            load_sae(bad)
        one_line(e)


def test_corrupt_truncated_and_half_written_downloads(tmp_path, hub_env):
    repo, inside = _stage(tmp_path, "gemma_scope_2")
    snap = publish_to_hub_cache(hub_env, "org/gs2", repo, commit=COMMIT)
    blob = (snap / inside / "params.safetensors").resolve()
    good = blob.read_bytes()
    load_sae(f"hf://org/gs2/{inside}")
    # a flipped byte (same size, parses): caught by the blob's sha256
    bad = bytearray(good)
    bad[-5] ^= 0xFF
    blob.write_bytes(bytes(bad))
    with pytest.raises(CorruptWeights, match="corrupt or truncated download.*hf cache delete") as e:
        load_sae(f"hf://org/gs2/{inside}")
    one_line(e)
    # truncated
    blob.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptWeights, match="truncated") as e:
        load_sae(f"hf://org/gs2/{inside}")
    one_line(e)
    # a corrupt config.json (git blob name) is refused too
    blob.write_bytes(good)
    cfg_blob = (snap / inside / "config.json").resolve()
    cfg_blob.write_text(cfg_blob.read_text().replace('"l0": 60', '"l0": 61'))  # still valid, not the hub's bytes
    with pytest.raises(CorruptWeights, match=r"config.json: corrupt or truncated download \(git sha1") as e:
        load_sae(f"hf://org/gs2/{inside}")
    one_line(e)
    # a download that never finished: only blobs/<hash>.incomplete, no snapshot entry
    repo2, inside2 = _stage(tmp_path / "b", "sparsify")
    snap2 = publish_to_hub_cache(hub_env, "org/sp", repo2, commit=COMMIT)
    weights = snap2 / inside2 / "sae.safetensors"
    target = weights.resolve()
    weights.unlink()
    target.rename(target.with_name(target.name + ".incomplete"))
    with pytest.raises(LoadError, match="not a whole dictionary in the Hugging Face cache .it holds cfg.json.") as e:
        load_sae(f"hf://org/sp/{inside2}")
    one_line(e)


def test_only_the_needed_files_are_fetched(tmp_path, hub_env, monkeypatch):
    """Online: the folder is listed, then only its format's files are downloaded, one by one."""
    import huggingface_hub
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    monkeypatch.delenv("HF_HUB_OFFLINE")
    remote, inside = _stage(tmp_path, "gemma_scope_2")
    (remote / inside / "huge_unrelated.bin").write_bytes(b"x" * 1000)
    write_gemma_scope_2(remote, kind="resid_post", layer=0)  # another dictionary in the same repository
    requested = []

    def files_under(path: str):
        base = remote / path
        return [p for p in base.iterdir()] if base.is_dir() else []

    def get_paths_info(self, repo_id, paths, **kw):
        p = remote / paths[0]
        cls = RepoFolder if p.is_dir() else RepoFile
        return [cls(path=paths[0], oid="0", size=0) if cls is RepoFile else cls(path=paths[0], oid="0")]

    def list_repo_tree(self, repo_id, path_in_repo=None, **kw):
        return [RepoFile(path=f"{path_in_repo}/{p.name}", oid="0", size=p.stat().st_size) if p.is_file()
                else RepoFolder(path=f"{path_in_repo}/{p.name}", oid="0") for p in files_under(path_in_repo)]  # fmt: skip

    def hf_hub_download(repo_id, filename, *, revision=None, cache_dir=None, local_files_only=False, **kw):
        assert not local_files_only
        requested.append(filename)
        src = remote / filename
        if not src.is_file():
            from huggingface_hub.errors import EntryNotFoundError

            raise EntryNotFoundError(filename)
        stage = tmp_path / "one" / filename
        stage.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, stage)
        snap = publish_to_hub_cache(cache_dir, repo_id, tmp_path / "one", commit=COMMIT)
        return str(snap / filename)

    monkeypatch.setattr(huggingface_hub.HfApi, "get_paths_info", get_paths_info)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", list_repo_tree)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    d = load_sae(f"hf://org/gs2/{inside}")
    assert sorted(requested) == [f"{inside}/config.json", f"{inside}/params.safetensors"]
    assert d.kind == "transcoder" and d.W_skip is not None
    # offline afterwards: the same reference works from the cache alone
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_env))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_sae(f"hf://org/gs2/{inside}").kind == "transcoder"


def test_hub_errors_are_one_line(monkeypatch, hub_env):
    from huggingface_hub import errors as E

    class FakeResponse:
        status_code = 404
        headers: dict = {}
        request = None
        url = "https://huggingface.co"

        def json(self):
            return {}

    ref = hub.parse_hub_uri("hf://org/repo/a/b.safetensors@v2")
    cases = [
        (E.RepositoryNotFoundError("x", response=FakeResponse()), "no repository org/repo on the hub"),
        (E.RevisionNotFoundError("x", response=FakeResponse()), "no revision 'v2' in org/repo"),
        (E.EntryNotFoundError("x"), "no such file in org/repo"),
        (ConnectionError("boom"), "cannot reach the hub"),
        (RuntimeError("something\nelse"), "hub error"),
    ]
    for exc, want in cases:
        err = hub._hub_error(ref, exc)
        assert want in str(err) and "\n" not in str(err) and str(err).startswith("hf://org/repo/a/b.safetensors@v2")
    assert hub.parse_hub_uri("hf://org/repo") == hub.HubRef("org/repo", "", None)
    assert hub.parse_hub_uri("hf://org/repo/x/y@abc").uri("f" * 40) == "hf://org/repo/x/y@" + "f" * 40
    assert torch.__version__  # the module imports torch lazily; this test needs none


# ------------------------------------------------------------------------ sae-atlas registry


def test_registry_command(hub_env, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from builders.registry_cli import registry as registry_cmd

    r = CliRunner().invoke(registry_cmd, ["info", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert (d["releases"], d["saes"]) == (170, 13857) and d["sha256"].startswith("bea73bf3")
    r = CliRunner().invoke(registry_cmd, ["list"])
    assert r.exit_code == 0 and "gemma-scope-2b-pt-res-canonical\tgoogle/gemma-scope-2b-pt-res\tgemma_scope" in r.output
    assert "(qwen_scope: not read)" in r.output
    r = CliRunner().invoke(registry_cmd, ["list", "gemma-scope-2b-pt-res-canonical"])
    assert (
        "gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical\tlayer_12/width_16k/average_l0_82\tgemma-2-2b/12-gemmascope-res-16k"
        in r.output
    )
    r = CliRunner().invoke(registry_cmd, ["list", "gemma-scope-2b-pt-rez"])
    assert r.exit_code == 1 and "nearest: gemma-scope-2b-pt-res" in r.output
    monkeypatch.setenv(registry.ENV_PATH, str(tmp_path / "nope.yaml"))
    r = CliRunner().invoke(registry_cmd, ["info"])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "nope.yaml: no such file" in r.output


def test_a_mistyped_path_when_no_registry_can_be_read(hub_env, monkeypatch, tmp_path):
    monkeypatch.setenv(registry.ENV_PATH, str(tmp_path / "gone.yaml"))
    with pytest.raises(
        LoadError, match=r"no such SAE file or folder: saes/L12 \(nor a registry name: .*gone.yaml: no such file\)"
    ) as e:
        load_sae("saes/L12")
    one_line(e)
