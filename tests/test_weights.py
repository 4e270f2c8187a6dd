"""The checkpoint registry and downloader (nsff_core/priors/weights.py) and the rule weights.

Nothing here touches the network: an autouse fixture lets only file:// URLs through and makes
every other URL fail as it would offline, and the caches (ours, torch hub's) live in tmp_path.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import runpy
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from nsff_core.errors import StageError
from nsff_core.priors import weights as W

from .conftest import REPO
from .test_envs import parse_rules

PAYLOAD = b"not really a checkpoint\n" * 1000


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network and no real caches: non-file URLs fail like a machine without internet."""
    calls: list[str] = []

    def urlopen(url, timeout):
        calls.append(url)
        if url.startswith("file:"):
            return urllib.request.urlopen(url, timeout=timeout)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(W, "_urlopen", urlopen)
    monkeypatch.delenv(W.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return calls


def toy_entry(tmp_path: Path, payload: bytes = PAYLOAD, **kw) -> W.WeightsEntry:
    """A registered checkpoint served from a local file (file:// URL)."""
    src = tmp_path / "server" / "toy.pth"
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    kw.setdefault("sha256_prefix", digest[:8])
    return W.WeightsEntry("toy", f"toy-{digest[:8]}.pth", src.as_uri(), **kw)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    e = toy_entry(tmp_path)
    monkeypatch.setitem(W.REGISTRY, "toy", e)
    monkeypatch.setitem(W.BACKEND_WEIGHTS, ("flow", "toy"), ("toy",))
    return e


def leftovers(cache: Path) -> list[str]:
    """Temporary files a download left behind."""
    return [p.name for p in cache.glob(".*")] if cache.exists() else []


# --------------------------------------------------------------------------- registry


def test_registry_has_the_known_checkpoints():
    files = {e.name: e.file for e in W.REGISTRY.values()}
    assert files["maskrcnn_v2_coco"] == "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"
    assert files["raft_large"] == "raft_large_C_T_V1-22a6c225.pth"
    assert files["dpt_large"] == "dpt_large-midas-2f21e586.pt"
    assert files["dpt_hybrid"] == "dpt_hybrid-midas-501f0c75.pt"
    assert files["detectron2_r50_fpn_3x"] == "model_final_f10217.pkl"
    assert W.REGISTRY["detectron2_r50_fpn_3x"].url.endswith(
        "/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
    )
    for e in W.REGISTRY.values():
        assert e.url.startswith("https://"), e
        if e.sha256_prefix:  # the prefix is the one the file name carries (torch hub convention)
            assert f"-{e.sha256_prefix}." in e.file, e
            assert e.url.endswith("/" + e.file), e
        if e.sha256:
            assert len(e.sha256) == 64 and e.sha256.startswith(e.sha256_prefix or "")
    for names in W.BACKEND_WEIGHTS.values():
        assert set(names) <= set(W.REGISTRY)


@pytest.mark.parametrize(
    "module, attr, name",
    [
        ("raft", "RAFT_CHECKPOINT_NAME", "raft_large"),
        ("raft", "RAFT_CHECKPOINT_URL", "raft_large"),
        ("maskrcnn", "MASKRCNN_CHECKPOINT_NAME", "maskrcnn_v2_coco"),
        ("maskrcnn", "MASKRCNN_CHECKPOINT_URL", "maskrcnn_v2_coco"),
        ("dpt", "ARCHS.dpt_large", "dpt_large"),
        ("dpt", "ARCHS.dpt_hybrid", "dpt_hybrid"),
    ],
)
def test_backends_name_the_registered_files(module, attr, name):
    """One place knows every checkpoint: what a backend module spells out must agree."""
    mod = pytest.importorskip(f"nsff_core.priors.{module}")
    value = mod
    for part in attr.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        if value is None:
            pytest.skip(f"nsff_core.priors.{module} has no {attr}")
    e = W.REGISTRY[name]
    if hasattr(value, "checkpoint"):  # a DPT architecture: file and URL
        assert (value.checkpoint, value.url) == (e.file, e.url)
    else:
        assert value == (e.url if attr.endswith("URL") else e.file)


@pytest.mark.parametrize(
    "backends, names",
    [
        (
            {"masks": "maskrcnn", "depth": "dpt_large", "flow": "raft"},
            ["maskrcnn_v2_coco", "dpt_large", "raft_large"],
        ),
        ({"masks": "epipolar", "depth": "sparse", "flow": "dis"}, []),
        ({"masks": "none", "depth": None, "flow": "dis"}, []),
        ({"masks": "maskrcnn+epipolar", "depth": "dpt"}, ["maskrcnn_v2_coco", "dpt_large"]),
        (
            {"masks": ["detectron2", "epipolar"], "depth": "dpt_hybrid"},
            ["detectron2_r50_fpn_3x", "dpt_hybrid"],
        ),
        ({"masks": "MaskRCNN", "evaluate": "lpips"}, ["maskrcnn_v2_coco", "alexnet", "lpips_alex"]),
        ({"flow": "raft", "masks": "raft"}, ["raft_large"]),  # per stage; no repeats
    ],
)
def test_needed_weights(backends, names):
    assert W.needed_weights(backends) == names


def test_unset_backend_means_the_stage_default(monkeypatch):
    assert W.needed_weights({"flow": None, "masks": None, "depth": None}) == []
    monkeypatch.setitem(W.STAGES, "flow", lambda: SimpleNamespace(backend="raft"))
    assert W.needed_weights({"flow": None}) == ["raft_large"]


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert W.cache_dir() == tmp_path / "home" / ".cache" / "nsff" / "weights"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert W.cache_dir(None) == tmp_path / "xdg" / "nsff" / "weights"
    monkeypatch.setenv(W.ENV_VAR, str(tmp_path / "env"))
    assert W.cache_dir("") == tmp_path / "env"
    assert W.cache_dir("~/w") == tmp_path / "home" / "w"
    monkeypatch.chdir(tmp_path)
    assert W.cache_dir("rel") == tmp_path / "rel"  # absolute, for the marker
    assert (
        W.weights_path("raft_large", "rel") == tmp_path / "rel" / "raft_large_C_T_V1-22a6c225.pth"
    )
    with pytest.raises(KeyError, match="unknown checkpoint 'nope'"):
        W.weights_path("nope", "rel")


def test_verify_full_hash_prefix_and_none(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(PAYLOAD)
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    assert W.verify(f, W.WeightsEntry("a", "x.bin", "u", sha256=digest.upper())) == digest
    assert W.verify(f, W.WeightsEntry("a", "x.bin", "u", sha256_prefix=digest[:8])) == digest
    assert W.verify(f, W.WeightsEntry("a", "x.bin", "u")) == digest  # unknown hash: accepted
    wrong = "0" * 64 if not digest.startswith("0") else "1" * 64
    with pytest.raises(W.HashMismatch, match=digest):
        W.verify(f, W.WeightsEntry("a", "x.bin", "u", sha256=wrong))
    with pytest.raises(W.HashMismatch, match="starting with"):
        W.verify(f, W.WeightsEntry("a", "x.bin", "u", sha256_prefix=wrong[:8]))


# --------------------------------------------------------------------------- fetching


def test_fetch_downloads_verifies_and_reuses(toy, tmp_path, offline, monkeypatch):
    cache = tmp_path / "cache"
    path = W.fetch("toy", cache, scene="demo")
    assert path == cache / toy.file and path.read_bytes() == PAYLOAD
    assert offline == [toy.url] and leftovers(cache) == []
    monkeypatch.setattr(W, "_urlopen", pytest.fail)  # a second fetch must not download
    assert W.fetch("toy", cache) == path


def test_fetch_through_an_opener_logs_progress(toy, tmp_path, monkeypatch, caplog):
    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(PAYLOAD))}

    monkeypatch.setattr(W, "_urlopen", lambda url, timeout: Response(PAYLOAD))
    monkeypatch.setattr(W, "CHUNK", 1000)
    monkeypatch.setattr(W, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger=W.__name__):
        path = W.fetch("toy", tmp_path / "cache")
    assert path.read_bytes() == PAYLOAD
    assert " MB (" in caplog.text and "%," in caplog.text and "sha256-prefix checked" in caplog.text


def test_truncated_transfer_fails_and_leaves_nothing(toy, tmp_path, monkeypatch):
    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(PAYLOAD) + 10)}

    monkeypatch.setattr(W, "_urlopen", lambda url, timeout: Response(PAYLOAD))
    cache = tmp_path / "cache"
    with pytest.raises(StageError, match=f"stopped after {len(PAYLOAD)} of"):
        W.fetch("toy", cache)
    assert not (cache / toy.file).exists() and leftovers(cache) == []


def test_hash_mismatch_fails_and_leaves_nothing(tmp_path, monkeypatch):
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    bad = "f" * 8 if not digest.startswith("f") else "0" * 8
    e = toy_entry(tmp_path, sha256_prefix=bad)
    monkeypatch.setitem(W.REGISTRY, "toy", e)
    cache = tmp_path / "cache"
    with pytest.raises(StageError) as info:
        W.fetch("toy", cache, scene="demo")
    msg = str(info.value)
    assert info.value.stage == "weights" and info.value.scene == "demo"
    assert digest in msg and f"starting with {bad}" in msg and str(cache / e.file) in msg
    assert not (cache / e.file).exists() and leftovers(cache) == []


def test_a_corrupt_cached_file_is_fetched_again(toy, tmp_path, caplog):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / toy.file).write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger=W.__name__):
        assert W.fetch("toy", cache).read_bytes() == PAYLOAD
    assert "fetching it again" in caplog.text


def test_offline_error_names_file_url_and_target(tmp_path, offline):
    cache = tmp_path / "cache"
    e = W.REGISTRY["raft_large"]
    with pytest.raises(StageError) as info:
        W.fetch("raft_large", cache, scene="demo")
    msg = str(info.value)
    target = cache / e.file
    assert offline == [e.url]  # it tried (the fixture made it fail)
    assert e.file in msg and e.url in msg and str(target) in msg
    assert f"download it by hand to {target}" in info.value.hint
    assert "Temporary failure in name resolution" in info.value.cause
    assert info.value.scene == "demo" and "rule 'weights'" in msg
    assert not target.exists() and leftovers(cache) == []


def test_offline_error_for_an_unreachable_file_url(tmp_path, monkeypatch):
    e = W.WeightsEntry("gone", "gone-00000000.pth", (tmp_path / "nowhere.pth").as_uri(), "0" * 64)
    monkeypatch.setitem(W.REGISTRY, "gone", e)
    with pytest.raises(StageError, match="cannot download checkpoint 'gone'") as info:
        W.fetch("gone", tmp_path / "cache")
    assert e.url in str(info.value) and str(tmp_path / "cache" / e.file) in str(info.value)


def test_offline_with_a_wrong_file_in_place_says_so(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    e = W.REGISTRY["dpt_large"]
    (cache / e.file).write_bytes(b"something else")
    with pytest.raises(StageError, match="is not it") as info:
        W.fetch("dpt_large", cache)
    assert "starting with 2f21e586" in str(info.value)


def test_unhashed_entry_is_accepted_with_a_warning(tmp_path, monkeypatch, caplog):
    e = toy_entry(tmp_path, sha256_prefix=None)
    monkeypatch.setitem(W.REGISTRY, "toy", e)
    with caplog.at_level(logging.WARNING, logger=W.__name__):
        assert W.fetch("toy", tmp_path / "cache").read_bytes() == PAYLOAD
    assert "no known hash" in caplog.text


def test_torch_hub_copy_is_reused_without_network(toy, tmp_path, monkeypatch):
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / toy.file).write_bytes(PAYLOAD)
    monkeypatch.setattr(W, "_urlopen", pytest.fail)
    assert W.fetch("toy", tmp_path / "cache").read_bytes() == PAYLOAD


def test_unknown_checkpoint_and_unwritable_cache(tmp_path, toy):
    with pytest.raises(StageError, match="unknown checkpoint 'nope'"):
        W.fetch("nope", tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StageError, match="cannot create the weights cache directory"):
        W.fetch("toy", blocker / "cache")


# --------------------------------------------------------------------------- marker and rule


def test_weights_free_backends_touch_nothing(tmp_path, offline):
    cache = tmp_path / "cache"
    marker = tmp_path / "results" / "demo" / "weights.json"
    content = W.fetch_for_scene(
        {"flow": "dis", "masks": "epipolar", "depth": "sparse"}, marker, cache
    )
    assert json.loads(marker.read_text()) == content
    assert content["weights"] == {} and content["cache_dir"] == str(cache)
    assert offline == [] and not cache.exists()


def test_marker_lists_paths_and_prior_rules_resolve_them(toy, tmp_path):
    cache = tmp_path / "cache"
    marker = tmp_path / "weights.json"
    W.fetch_for_scene({"flow": "toy", "masks": "epipolar"}, marker, cache, scene="demo")
    listed = json.loads(marker.read_text())["weights"]
    assert list(listed) == ["toy"]
    assert listed["toy"]["path"] == str(cache / toy.file)
    assert listed["toy"]["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert listed["toy"]["check"] == "sha256-prefix" and listed["toy"]["bytes"] == len(PAYLOAD)
    assert W.resolve_from_marker(marker, "toy", "demo", "flow") == cache / toy.file
    with pytest.raises(StageError, match="does not list checkpoint 'raft_large'") as info:
        W.resolve_from_marker(marker, "raft_large", "demo", "flow")
    assert info.value.stage == "flow"
    (cache / toy.file).unlink()
    with pytest.raises(StageError, match="rerun the weights rule"):
        W.resolve_from_marker(marker, "toy", "demo", "flow")


def test_rule_declaration():
    rules = parse_rules((REPO / "rules" / "weights.smk").read_text())
    d = rules["weights"]
    assert d["output"].startswith("marker=") and "results/{scene}/weights.json" in d["output"]
    assert d["localrule"] == "True"  # runs where snakemake runs: cluster jobs never download
    assert d["conda"] == "../envs/video.yaml"
    assert d["script"] == "../workflow_scripts/weights.py"
    for key in ("log", "benchmark", "threads", "resources", "params"):
        assert key in d


def _run_script(tmp_path, backends, cache):
    marker = tmp_path / "results" / "demo" / "weights.json"
    smk = SimpleNamespace(
        scriptdir=str(REPO / "workflow_scripts"),
        rule="weights",
        log=[str(tmp_path / "weights.log")],
        wildcards=SimpleNamespace(scene="demo"),
        params=SimpleNamespace(backends=backends, cache_dir=cache),
        output=SimpleNamespace(marker=str(marker)),
    )
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        runpy.run_path(str(REPO / "workflow_scripts" / "weights.py"), {"snakemake": smk})
    finally:
        for h in root.handlers:
            if h not in saved[0]:
                h.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    return marker


def test_script_writes_the_marker(toy, tmp_path):
    marker = _run_script(tmp_path, {"flow": "toy"}, str(tmp_path / "cache"))
    assert json.loads(marker.read_text())["weights"]["toy"]["path"] == str(
        tmp_path / "cache" / toy.file
    )
    marker = _run_script(tmp_path, {"flow": "dis"}, "")  # "" = the default cache
    assert json.loads(marker.read_text())["cache_dir"] == str(tmp_path / "xdg" / "nsff" / "weights")


def test_script_exits_with_the_offline_message(tmp_path):
    with pytest.raises(SystemExit) as info:
        _run_script(tmp_path, {"flow": "raft"}, str(tmp_path / "cache"))
    assert info.value.code == 1
    log = (tmp_path / "weights.log").read_text()
    assert "raft_large_C_T_V1-22a6c225.pth" in log and "download it by hand to" in log
