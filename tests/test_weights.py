"""The checkpoint registry and downloader (nsff_core/priors/weights/) and the rule weights.

Nothing here touches the network: an autouse fixture lets only file:// URLs through and makes
every other URL fail as it would offline, and the caches (ours, torch hub's) live in tmp_path.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import os
import runpy
import stat
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from nsff_core.errors import StageError
from nsff_core.priors import weights as W
from nsff_core.priors.weights import fetching as F

from .conftest import REPO
from .test_envs import parse_rules

#: the module of the hash checks
V = importlib.import_module("nsff_core.priors.weights.hashing")

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

    monkeypatch.setattr(F, "_urlopen", urlopen)
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
    """Temporary files a download left behind (the lock files stay, by design)."""
    if not cache.exists():
        return []
    return [p.name for p in cache.glob(".*") if not p.name.endswith(".lock")]


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
    mod = pytest.importorskip(f"nsff_core.priors.nets.{module}")
    value = mod
    for part in attr.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        if value is None:
            pytest.skip(f"nsff_core.priors.nets.{module} has no {attr}")
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
        ({"masks": "maskrcnn", "depth": "dpt"}, ["maskrcnn_v2_coco", "dpt_large"]),
        (
            {"masks": "detectron2", "depth": "dpt_hybrid"},
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


def test_the_package_passes_on_the_names_of_its_modules():
    """``nsff_core.priors.weights`` names what its modules define, the very objects (so a patch
    of a module's function, as here of ``F._urlopen``, is what the package's callers run)."""
    R = importlib.import_module("nsff_core.priors.weights.registry")
    for name in W.__all__:
        assert any(getattr(m, name, None) is getattr(W, name) for m in (R, V, F)), name
    assert W.fetch is F.fetch and W.verify is V.verify and W._urlopen is F._urlopen
    assert W.log is V.log is F.log and W.log.name == W.__name__
    with pytest.raises(AttributeError, match="no_such_name"):
        W.no_such_name  # noqa: B018


# --------------------------------------------------------------------------- fetching


def test_fetch_downloads_verifies_and_reuses(toy, tmp_path, offline, monkeypatch):
    cache = tmp_path / "cache"
    path = W.fetch("toy", cache, scene="demo")
    assert path == cache / toy.file and path.read_bytes() == PAYLOAD
    assert offline == [toy.url] and leftovers(cache) == []
    monkeypatch.setattr(F, "_urlopen", pytest.fail)  # a second fetch must not download
    assert W.fetch("toy", cache) == path


def test_fetch_through_an_opener_logs_progress(toy, tmp_path, monkeypatch, caplog):
    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(PAYLOAD))}

    monkeypatch.setattr(F, "_urlopen", lambda url, timeout: Response(PAYLOAD))
    monkeypatch.setattr(F, "CHUNK", 1000)
    monkeypatch.setattr(F, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger=W.__name__):
        path = W.fetch("toy", tmp_path / "cache")
    assert path.read_bytes() == PAYLOAD
    assert " MB (" in caplog.text and "%," in caplog.text and "on first use" in caplog.text


def test_truncated_transfer_fails_and_leaves_nothing(toy, tmp_path, monkeypatch):
    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(PAYLOAD) + 10)}

    monkeypatch.setattr(F, "_urlopen", lambda url, timeout: Response(PAYLOAD))
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


def test_unhashed_entry_is_trusted_on_first_use_with_a_warning(tmp_path, monkeypatch, caplog):
    e = toy_entry(tmp_path, sha256_prefix=None)
    monkeypatch.setitem(W.REGISTRY, "toy", e)
    with caplog.at_level(logging.WARNING, logger=W.__name__):
        assert W.fetch("toy", tmp_path / "cache").read_bytes() == PAYLOAD
    assert "no published full sha256" in caplog.text and "on first use" in caplog.text
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    assert W.read_record(tmp_path / "cache")[e.file]["sha256"] == digest


def test_torch_hub_copy_is_reused_without_network(toy, tmp_path, monkeypatch):
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / toy.file).write_bytes(PAYLOAD)
    monkeypatch.setattr(F, "_urlopen", pytest.fail)
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
    assert listed["toy"]["check"] == "recorded-sha256" and listed["toy"]["bytes"] == len(PAYLOAD)
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
    assert d["output"] == "marker=SCENE.weights"
    from nsff_core.workflow.layout import SceneLayout

    assert SceneLayout.pattern().weights == "results/{scene}/weights.json"
    assert d["localrule"] == "True"  # runs where snakemake runs: cluster jobs never download
    assert d["conda"] == "../envs/video.yaml"
    assert d["script"] == "../workflow_scripts/weights.py"
    for key in ("log", "benchmark", "threads", "resources", "params"):
        assert key in d


def _run_script(tmp_path, backends, cache, trust_on_first_use=True):
    marker = tmp_path / "results" / "demo" / "weights.json"
    smk = SimpleNamespace(
        scriptdir=str(REPO / "workflow_scripts"),
        rule="weights",
        log=[str(tmp_path / "weights.log")],
        wildcards=SimpleNamespace(scene="demo"),
        params=SimpleNamespace(
            backends=backends, cache_dir=cache, trust_on_first_use=trust_on_first_use
        ),
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


def test_script_passes_trust_on_first_use(toy, tmp_path):
    with pytest.raises(SystemExit):
        _run_script(tmp_path, {"flow": "toy"}, str(tmp_path / "cache"), trust_on_first_use=False)
    assert "trust_on_first_use is false" in (tmp_path / "weights.log").read_text()


def test_the_rule_passes_the_configured_trust_on_first_use():
    rule = (REPO / "rules" / "weights.smk").read_text()
    assert "trust_on_first_use=weights_config().trust_on_first_use" in rule


def test_script_exits_with_the_offline_message(tmp_path):
    with pytest.raises(SystemExit) as info:
        _run_script(tmp_path, {"flow": "raft"}, str(tmp_path / "cache"))
    assert info.value.code == 1
    log = (tmp_path / "weights.log").read_text()
    assert "raft_large_C_T_V1-22a6c225.pth" in log and "download it by hand to" in log


# --------------------------------------------------------------------------- trust on first use


def same_prefix_payload(payload: bytes, digits: int) -> bytes:
    """Another payload of the same length whose sha256 starts with the same ``digits`` hex
    digits (found by counting; a few hundred tries for 2 digits)."""
    want = hashlib.sha256(payload).hexdigest()[:digits]
    for i in range(1_000_000):
        other = f"{i:08d}".encode() + payload[8:]
        if other != payload and hashlib.sha256(other).hexdigest().startswith(want):
            return other
    raise AssertionError("no payload found")


@pytest.fixture
def short_prefix_toy(tmp_path, monkeypatch):
    """An entry checked by a 2-digit prefix only: a different file with the same prefix is easy
    to make, as a forged file with the same 8-digit prefix would be for a determined attacker."""
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    e = toy_entry(tmp_path, sha256_prefix=digest[:2])
    monkeypatch.setitem(W.REGISTRY, "toy", e)
    return e, same_prefix_payload(PAYLOAD, 2)


def test_first_fetch_records_the_full_digest_readable_by_the_group(toy, tmp_path):
    old = os.umask(0o002)
    try:
        path = W.fetch("toy", tmp_path / "cache")
    finally:
        os.umask(old)
    record = tmp_path / "cache" / W.RECORD_FILE
    info = json.loads(record.read_text())["files"][toy.file]
    assert info["sha256"] == hashlib.sha256(PAYLOAD).hexdigest() and info["entry"] == "toy"
    assert info["source"].startswith("first use") and info["stat"][0] == len(PAYLOAD)
    assert stat.S_IMODE(record.stat().st_mode) & 0o060 == 0o060  # group read and write
    assert path.read_bytes() == PAYLOAD


def test_a_different_file_with_the_same_prefix_is_refused_by_loaders(short_prefix_toy, tmp_path):
    """Before: the 8-digit prefix was all a loader or a later fetch checked."""
    e, forged = short_prefix_toy
    cache = tmp_path / "cache"
    path = W.fetch("toy", cache, scene="demo")
    path.write_bytes(forged)  # same size, same prefix: passes a prefix check
    with pytest.raises(W.WeightsMismatch) as info, W.open_verified(path, "demo", "flow"):
        pass
    msg, digest = str(info.value), hashlib.sha256(PAYLOAD).hexdigest()
    assert info.value.stage == "flow" and info.value.scene == "demo"
    assert str(path) in msg and digest in msg and hashlib.sha256(forged).hexdigest() in msg
    assert f"delete {path}" in info.value.hint and W.RECORD_FILE in info.value.hint


def test_loaders_hash_even_when_the_stat_is_unchanged(short_prefix_toy, tmp_path):
    e, forged = short_prefix_toy
    path = W.fetch("toy", tmp_path / "cache")
    st = path.stat()
    with open(path, "r+b") as f:  # rewritten in place, times set back
        f.write(forged)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(W.WeightsMismatch), W.open_verified(path):
        pass


def test_fetch_repairs_a_changed_file_from_the_recorded_download(short_prefix_toy, tmp_path):
    """Before: a cached file that passed the prefix check was reused as it was."""
    e, forged = short_prefix_toy
    path = W.fetch("toy", tmp_path / "cache")
    path.write_bytes(forged)
    assert W.fetch("toy", tmp_path / "cache") == path
    assert path.read_bytes() == PAYLOAD  # fetched again and checked against the record


def test_a_file_changed_upstream_after_first_use_is_refused(short_prefix_toy, tmp_path):
    e, forged = short_prefix_toy
    cache = tmp_path / "cache"
    path = W.fetch("toy", cache)
    path.unlink()
    Path(urllib.request.url2pathname(e.url[len("file:") :])).write_bytes(forged)
    with pytest.raises(W.WeightsMismatch) as info:
        W.fetch("toy", cache, scene="demo")
    msg = str(info.value)
    assert hashlib.sha256(forged).hexdigest() in msg and hashlib.sha256(PAYLOAD).hexdigest() in msg
    assert "changed upstream" in msg and f'"{e.file}"' in info.value.hint
    assert not path.exists() and leftovers(cache) == []


def test_without_trust_on_first_use_only_full_digests_are_used(toy, tmp_path, offline):
    cache = tmp_path / "cache"
    with pytest.raises(StageError, match="trust_on_first_use is false") as info:
        W.fetch_for_scene({"flow": "toy"}, tmp_path / "w.json", cache, trust_on_first_use=False)
    assert 'sha256="<64 hex digits>"' in info.value.hint and "REGISTRY" in info.value.hint
    assert offline == [] and not (tmp_path / "w.json").exists()  # nothing downloaded
    pinned = toy_entry(tmp_path, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    W.REGISTRY["toy"] = pinned  # the fixture's monkeypatch restores the registry
    content = W.fetch_for_scene(
        {"flow": "toy"}, tmp_path / "w.json", cache, trust_on_first_use=False
    )
    assert content["weights"]["toy"]["check"] == "registry-sha256"
    with W.open_verified(cache / pinned.file) as f:  # loaders check the registry digest too
        assert f.read() == PAYLOAD


def test_the_fetch_reuses_the_recorded_digest_while_the_file_is_unchanged(
    toy, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    path = W.fetch("toy", cache)
    hashed = []
    real = V._hash_open_file
    monkeypatch.setattr(V, "_hash_open_file", lambda f: hashed.append(1) or real(f))
    assert W.fetch("toy", cache) == path and hashed == []  # stat unchanged: no hashing
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert W.fetch("toy", cache) == path and hashed == [1]  # touched: hashed again
    assert W.read_record(cache)[toy.file]["stat"][1] == st.st_mtime_ns + 10**9


def test_concurrent_first_uses_merge_into_one_record(tmp_path, monkeypatch):
    """Several jobs record files of one cache at once: no entry is lost."""
    folder = tmp_path / "cache"
    folder.mkdir()
    names = []
    for i in range(12):
        payload = PAYLOAD + bytes([i])
        e = W.WeightsEntry(f"t{i}", f"t{i}.pth", "file:///nowhere")
        monkeypatch.setitem(W.REGISTRY, e.name, e)
        (folder / e.file).write_bytes(payload)
        names.append(e.file)
    barrier = threading.Barrier(len(names))

    def use(name):
        barrier.wait()
        with W.open_verified(folder / name):
            pass

    threads = [threading.Thread(target=use, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(W.read_record(folder)) == sorted(names)


def test_a_damaged_record_is_named(toy, tmp_path):
    cache = tmp_path / "cache"
    path = W.fetch("toy", cache)
    (cache / W.RECORD_FILE).write_text('{"files": {"x": {"sha256": "abc"}}}')
    with (
        pytest.raises(StageError, match="digest record .* is damaged") as info,
        W.open_verified(path, "demo", "flow"),
    ):
        pass
    assert "delete it" in info.value.hint


def test_a_symlinked_lock_file_is_refused(toy, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (cache / f".{toy.file}.lock").symlink_to(victim)
    with pytest.raises(StageError, match="is a symbolic link"):
        W.fetch("toy", cache)
    assert victim.read_text() == "keep"


def test_loaders_find_registry_files_by_name_and_lpips_alias():
    assert W.entry_for_file("raft_large_C_T_V1-22a6c225.pth").name == "raft_large"
    assert W.entry_for_file("alex.pth").name == "lpips_alex"
    assert W.entry_for_file("alexnet.pth").name == "alexnet"
    assert W.entry_for_file("my_own.pth") is None


def test_concurrent_fetches_of_one_file_download_it_once(toy, tmp_path, monkeypatch):
    """Two weights jobs fetch the same file at once: the second waits for the first and reuses
    its download. Before: both downloaded, and the first to finish deleted the other's
    temporary file, so the other failed with FileNotFoundError."""
    a_reading, release_a = threading.Event(), threading.Event()
    calls = []

    class Slow(io.BytesIO):
        headers: dict = {}

        def read(self, n=-1):
            a_reading.set()
            assert release_a.wait(timeout=60)
            return super().read(n)

    def urlopen(url, timeout):
        calls.append(url)
        return Slow(PAYLOAD) if len(calls) == 1 else io.BytesIO(PAYLOAD)

    monkeypatch.setattr(F, "_urlopen", urlopen)
    real_info = W.log.info

    def info(msg, *args):  # B waits on A's lock: let A finish
        if "waiting for another process" in msg:
            release_a.set()
        real_info(msg, *args)

    monkeypatch.setattr(W.log, "info", info)
    cache = tmp_path / "cache"
    results: dict[str, object] = {}

    def job(name):
        try:
            results[name] = W.fetch("toy", cache)
        except Exception as exc:  # reported by the assertions below
            results[name] = exc

    a = threading.Thread(target=job, args=("a",))
    a.start()
    assert a_reading.wait(timeout=60)
    b = threading.Thread(target=job, args=("b",))
    b.start()
    b.join(timeout=60)
    release_a.set()  # (before the fix B never waited)
    a.join(timeout=60)
    assert results == {"a": cache / toy.file, "b": cache / toy.file}
    assert len(calls) == 1 and (cache / toy.file).read_bytes() == PAYLOAD


# --------------------------------------------------------------------------- optional (LPIPS)

LPIPS_NAMES = ["alexnet", "lpips_alex"]


def test_an_optional_fetch_offline_lists_the_lpips_weights_as_unavailable(
    tmp_path, offline, caplog
):
    marker = tmp_path / "weights_evaluate.json"
    with caplog.at_level(logging.WARNING, logger=W.__name__):
        content = W.fetch_for_scene(
            {"evaluate": "lpips"}, marker, tmp_path / "cache", "demo", optional=True
        )
    assert json.loads(marker.read_text()) == content
    assert offline == [W.REGISTRY[n].url for n in LPIPS_NAMES]  # it tried, and failed
    assert content["weights"] == {} and list(content["unavailable"]) == LPIPS_NAMES
    for name in LPIPS_NAMES:
        reason = content["unavailable"][name]
        assert "cannot download" in reason and "Temporary failure" in reason
        assert f"{name} is unavailable" in caplog.text
    assert content["download"] is True
    # the same fetch, not optional, is the error of rule weights
    with pytest.raises(W.NotFetched, match="cannot download checkpoint 'alexnet'"):
        W.fetch_for_scene({"evaluate": "lpips"}, tmp_path / "w.json", tmp_path / "cache")
    assert not (tmp_path / "w.json").exists()


def test_without_download_the_network_and_the_cache_are_never_touched(tmp_path, monkeypatch):
    monkeypatch.setattr(F, "_urlopen", lambda url, timeout: pytest.fail(f"opened {url}"))
    cache = tmp_path / "cache"
    content = W.fetch_for_scene(
        {"evaluate": "lpips"},
        tmp_path / "weights_evaluate.json",
        cache,
        "demo",
        optional=True,
        download=False,
        stage="weights_evaluate",
    )
    assert content["weights"] == {} and content["download"] is False
    for name in LPIPS_NAMES:
        assert "downloads are off" in content["unavailable"][name]
        assert str(cache / W.REGISTRY[name].file) in content["unavailable"][name]
    assert not cache.exists()  # not even created
    with pytest.raises(W.NotFetched, match="downloads are off") as info:
        W.fetch_for_scene({"evaluate": "lpips"}, tmp_path / "w.json", cache, download=False)
    assert info.value.stage == "weights"


def test_without_download_files_in_the_caches_are_used(toy, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    W.fetch("toy", cache)  # from its file:// URL: now in the cache
    digest = hashlib.sha256(PAYLOAD + b"x").hexdigest()
    hub_only = W.WeightsEntry(
        "toy2", f"toy2-{digest[:8]}.pth", "https://example.invalid/toy2.pth", None, digest[:8]
    )
    monkeypatch.setitem(W.REGISTRY, "toy2", hub_only)
    monkeypatch.setitem(W.BACKEND_WEIGHTS, ("masks", "toy2"), ("toy2",))
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / hub_only.file).write_bytes(PAYLOAD + b"x")
    monkeypatch.setattr(F, "_urlopen", lambda url, timeout: pytest.fail(f"opened {url}"))
    content = W.fetch_for_scene(
        {"flow": "toy", "masks": "toy2"}, tmp_path / "m.json", cache, optional=True, download=False
    )
    assert content["unavailable"] == {}
    assert content["weights"]["toy"]["path"] == str(cache / toy.file)
    assert content["weights"]["toy2"]["path"] == str(cache / hub_only.file)
    assert (cache / hub_only.file).read_bytes() == PAYLOAD + b"x"


@pytest.mark.parametrize("download", [False, True])
def test_an_optional_fetch_still_refuses_a_wrong_file(toy, tmp_path, monkeypatch, download):
    """A file that fails its hash check is never "unavailable": the cache holds something else
    than the checkpoint, and with the download on and no network the error says so too."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / toy.file).write_bytes(b"something else")
    # served over https, which the offline fixture fails
    online = W.WeightsEntry(
        "toy", toy.file, "https://example.invalid/toy.pth", None, toy.sha256_prefix
    )
    monkeypatch.setitem(W.REGISTRY, "toy", online)
    with pytest.raises(StageError) as info:
        W.fetch_for_scene(
            {"flow": "toy"},
            tmp_path / "m.json",
            cache,
            "demo",
            optional=True,
            download=download,
            stage="weights_evaluate",
        )
    assert not isinstance(info.value, W.NotFetched)
    assert info.value.stage == "weights_evaluate" and info.value.scene == "demo"
    assert f"starting with {toy.sha256_prefix}" in str(info.value)
    assert not (tmp_path / "m.json").exists()


def test_an_optional_fetch_without_trust_on_first_use_lists_unhashed_files(tmp_path, offline):
    content = W.fetch_for_scene(
        {"evaluate": "lpips"},
        tmp_path / "m.json",
        tmp_path / "cache",
        optional=True,
        trust_on_first_use=False,
    )
    assert list(content["unavailable"]) == LPIPS_NAMES and offline == []
    assert "trust_on_first_use is false" in content["unavailable"]["lpips_alex"]


def test_rule_weights_evaluate_declaration():
    rules = parse_rules((REPO / "rules" / "weights.smk").read_text())
    d = rules["weights_evaluate"]
    assert d["output"] == "marker=SCENE.weights_evaluate"
    assert d["localrule"] == "True"
    assert d["conda"] == rules["weights"]["conda"]
    assert d["script"] == "../workflow_scripts/weights_evaluate.py"
    text = (REPO / "rules" / "weights.smk").read_text()
    weights, evaluate = text.split("rule weights_evaluate:")
    params = evaluate.split("params:")[1]
    assert "backends=metric_request()" in params
    assert 'download=stage_setting("eval", "lpips_fetch")' in params
    assert "trust_on_first_use=weights_config().trust_on_first_use" in params
    assert "cache_dir=weights_config().cache_dir" in params
    # rule weights keeps its params: the LPIPS settings never rerun the priors
    assert "lpips" not in weights.split("rule weights:")[1].split("params:")[1].split("script:")[0]


def _run_evaluate_script(tmp_path, download):
    marker = tmp_path / "results" / "demo" / "weights_evaluate.json"
    smk = SimpleNamespace(
        scriptdir=str(REPO / "workflow_scripts"),
        rule="weights_evaluate",
        log=[str(tmp_path / "weights_evaluate.log")],
        wildcards=SimpleNamespace(scene="demo"),
        params=SimpleNamespace(
            backends={"evaluate": "lpips"},
            cache_dir=str(tmp_path / "cache"),
            trust_on_first_use=True,
            download=download,
        ),
        output=SimpleNamespace(marker=str(marker)),
    )
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        runpy.run_path(str(REPO / "workflow_scripts" / "weights_evaluate.py"), {"snakemake": smk})
    finally:
        for h in root.handlers:
            if h not in saved[0]:
                h.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    return marker


@pytest.mark.parametrize("download", [False, True])
def test_the_weights_evaluate_script_goes_on_offline(tmp_path, offline, download):
    marker = _run_evaluate_script(tmp_path, download)
    content = json.loads(marker.read_text())
    assert list(content["unavailable"]) == LPIPS_NAMES and content["download"] is download
    assert len(offline) == (2 if download else 0)
    log = (tmp_path / "weights_evaluate.log").read_text()
    assert "alexnet is unavailable" in log and "rule weights_evaluate" in log
