"""Pretrained checkpoints: one registry, a hash-checked cache, and a clear offline failure.

Every checkpoint the workflow can use is an entry of :data:`REGISTRY` (file name, URL, hash).
The rule ``weights`` calls :func:`fetch_for_scene`, which fetches what the scene's backends need
(:func:`needed_weights`) into the cache directory (:func:`cache_dir`) and writes the marker
``results/{scene}/weights.json`` with the resolved paths. The prior rules read their checkpoint
paths from that marker (:func:`resolve_from_marker`) and never download; the rule ``weights`` is
a local rule, so on a cluster only the submitting machine touches the network.

Hashes. An entry can carry a full ``sha256`` (checked in full) and/or a ``sha256_prefix``: the
leading hex digits of the file's sha256, which torchvision and torch hub embed in their file
names (``raft_large_C_T_V1-22a6c225.pth`` -> sha256 starts with ``22a6c225``; torch hub's
``check_hash`` checks exactly this prefix). The full digests of the public checkpoints were not
known when the registry was written (they cannot be downloaded here), so most entries check the
8-digit prefix only: that catches truncated and corrupt downloads and wrong files, not a
deliberately forged file. Entries with neither (the detectron2 model-zoo file, the LPIPS linear
layers) are accepted unchecked, with a warning. Every marker records the full sha256 of each file
it lists, so a full digest can be copied into the registry once a trusted file is at hand.

Cache directory: the configured value (config ``weights.cache_dir``), else ``$NSFF_WEIGHTS_DIR``,
else ``$XDG_CACHE_HOME/nsff/weights`` (``~/.cache/nsff/weights``). The LPIPS weights of
:mod:`nsff_core.metrics` are looked up in ``$NSFF_WEIGHTS_DIR`` under the same file names.

Downloads go to a temporary file in the cache directory and are renamed into place only after
the hash check, so an interrupted or concurrent download never leaves a half-written checkpoint.
A file torch hub already cached (``$TORCH_HOME/hub/checkpoints``, same file name) is copied
instead of downloaded when its hash checks out.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import STAGES
from ..errors import StageError
from ..io import atomic_file

log = logging.getLogger(__name__)

STAGE = "weights"
ENV_VAR = "NSFF_WEIGHTS_DIR"
CHUNK = 1 << 20
#: seconds between progress lines of a download
PROGRESS_EVERY_S = 5.0
#: what a failed download can raise (URLError and socket errors are OSErrors)
NETWORK_ERRORS = (OSError, http.client.HTTPException, ValueError)


@dataclass(frozen=True)
class WeightsEntry:
    """One checkpoint.

    Attributes:
        name: registry key.
        file: file name in the cache directory.
        url: where it is downloaded from.
        sha256: the full hex digest, when known (checked in full).
        sha256_prefix: leading hex digits of the digest (checked when the full one is unknown);
            torchvision/torch-hub file names carry the first 8.
        description: what it is, for messages.
    """

    name: str
    file: str
    url: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    description: str = ""

    @property
    def check(self) -> str:
        """How a file is verified: ``sha256``, ``sha256-prefix`` or ``none``."""
        if self.sha256:
            return "sha256"
        return "sha256-prefix" if self.sha256_prefix else "none"

    @property
    def expected(self) -> str:
        """The expected digest (or prefix) for messages."""
        if self.sha256:
            return f"sha256 {self.sha256}"
        if self.sha256_prefix:
            return f"sha256 starting with {self.sha256_prefix}"
        return "no known sha256"


def _entries(*entries: WeightsEntry) -> dict[str, WeightsEntry]:
    return {e.name: e for e in entries}


_TV = "https://download.pytorch.org/models/"
_DPT = "https://github.com/isl-org/DPT/releases/download/1_0/"

#: Every checkpoint the workflow knows. Full sha256 digests are unknown for all of them (see the
#: module docstring): the torchvision and DPT entries check the 8-digit prefix from their file
#: names, the detectron2 and LPIPS-linear entries are unchecked.
REGISTRY: dict[str, WeightsEntry] = _entries(
    WeightsEntry(
        "maskrcnn_v2_coco",
        "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
        _TV + "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
        sha256_prefix="73cbd019",
        description="torchvision Mask R-CNN ResNet-50 FPN v2, COCO "
        "(MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1)",
    ),
    WeightsEntry(
        "raft_large",
        "raft_large_C_T_V1-22a6c225.pth",
        _TV + "raft_large_C_T_V1-22a6c225.pth",
        sha256_prefix="22a6c225",
        description="torchvision RAFT-Large, C+T (Raft_Large_Weights.C_T_V1 = raft-things)",
    ),
    WeightsEntry(
        "dpt_large",
        "dpt_large-midas-2f21e586.pt",
        _DPT + "dpt_large-midas-2f21e586.pt",
        sha256_prefix="2f21e586",
        description="DPT-Large (ViT-L/16) monocular depth, MiDaS training mix",
    ),
    WeightsEntry(
        "dpt_hybrid",
        "dpt_hybrid-midas-501f0c75.pt",
        _DPT + "dpt_hybrid-midas-501f0c75.pt",
        sha256_prefix="501f0c75",
        description="DPT-Hybrid (ViT-Hybrid) monocular depth, MiDaS training mix",
    ),
    WeightsEntry(
        "detectron2_r50_fpn_3x",
        "model_final_f10217.pkl",
        "https://dl.fbaipublicfiles.com/detectron2/COCO-InstanceSegmentation/"
        "mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl",
        description="detectron2 model zoo Mask R-CNN R50-FPN 3x, COCO (hash unknown: unchecked)",
    ),
    WeightsEntry(
        "alexnet",
        "alexnet-owt-7be5be79.pth",
        _TV + "alexnet-owt-7be5be79.pth",
        sha256_prefix="7be5be79",
        description="torchvision AlexNet, ImageNet (the LPIPS backbone)",
    ),
    WeightsEntry(
        "lpips_alex",
        "lpips_alex_v0.1.pth",
        "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",
        description="LPIPS v0.1 linear layers for AlexNet (hash unknown: unchecked)",
    ),
)

#: Checkpoints per (stage, backend). A backend that is not listed needs no weights (dis,
#: epipolar, sparse, none); an unknown backend is reported by its own stage, not here.
BACKEND_WEIGHTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("masks", "maskrcnn"): ("maskrcnn_v2_coco",),
    ("masks", "detectron2"): ("detectron2_r50_fpn_3x",),
    ("flow", "raft"): ("raft_large",),
    ("depth", "dpt"): ("dpt_large",),
    ("depth", "dpt_large"): ("dpt_large",),
    ("depth", "dpt_hybrid"): ("dpt_hybrid",),
    ("evaluate", "lpips"): ("alexnet", "lpips_alex"),
}


class HashMismatch(ValueError):
    """A file's sha256 is not the registered one."""


# --------------------------------------------------------------------------- lookup


def entry(name: str) -> WeightsEntry:
    """The registry entry ``name``; ``KeyError`` naming the known entries otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown checkpoint {name!r}; known: {sorted(REGISTRY)}") from None


def cache_dir(configured: str | os.PathLike | None = None) -> Path:
    """The weights cache directory (absolute; not created here).

    ``configured`` (config ``weights.cache_dir``; ``~`` and ``$VARS`` expand), else
    ``$NSFF_WEIGHTS_DIR``, else ``$XDG_CACHE_HOME/nsff/weights``, else ``~/.cache/nsff/weights``.
    """
    raw = os.fspath(configured) if configured else os.environ.get(ENV_VAR)
    if raw:
        return Path(os.path.expandvars(os.path.expanduser(raw))).absolute()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base).absolute() / "nsff" / "weights"


def weights_path(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Where checkpoint ``name`` lives in the cache (``cache`` as for :func:`cache_dir`)."""
    return cache_dir(cache) / entry(name).file


def needed_weights(backends: Mapping[str, Any]) -> list[str]:
    """Registry names of the checkpoints a scene's backends need, in order, without repeats.

    Args:
        backends: stage -> backend, e.g. ``{"masks": "maskrcnn", "depth": "dpt_large",
            "flow": "raft"}``. A value may combine backends (``"maskrcnn+epipolar"``, a list);
            ``None`` means the stage's default (:mod:`nsff_core.config`). Weights-free and
            unknown backends add nothing.
    """
    names: list[str] = []
    for stage, value in backends.items():
        if value is None and stage in STAGES:
            value = getattr(STAGES[stage](), "backend", None)
        for backend in _split_backends(value):
            for name in BACKEND_WEIGHTS.get((stage, backend), ()):
                if name not in names:
                    names.append(name)
    return names


def _split_backends(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        parts = value.replace(",", "+").split("+")
    elif isinstance(value, Iterable):
        parts = [p for v in value for p in _split_backends(v)]
    else:
        parts = [str(value)]
    return [p.strip().lower() for p in parts if p and p.strip()]


# --------------------------------------------------------------------------- hashes


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def digest_matches(e: WeightsEntry, digest: str) -> bool:
    """Whether ``digest`` satisfies the entry: the full sha256 if known, else its prefix,
    else anything."""
    digest = digest.lower()
    if e.sha256:
        return digest == e.sha256.lower()
    if e.sha256_prefix:
        return digest.startswith(e.sha256_prefix.lower())
    return True


def verify(path: str | os.PathLike, e: WeightsEntry | str) -> str:
    """Check a file against its registry entry; returns its full sha256.

    Raises:
        HashMismatch: the digest differs from the entry's sha256 (or its prefix).
    """
    e = entry(e) if isinstance(e, str) else e
    digest = sha256_file(path)
    if not digest_matches(e, digest):
        raise HashMismatch(f"{path} has sha256 {digest}, expected {e.expected}")
    if e.check == "none":
        log.warning(
            "%s: no known hash for %s; accepted unchecked (sha256 %s)", e.name, path, digest
        )
    return digest


# --------------------------------------------------------------------------- fetching


def fetch(
    name: str,
    cache: str | os.PathLike | None = None,
    scene: str | None = None,
    *,
    timeout: float = 60.0,
) -> Path:
    """The path of checkpoint ``name`` in the cache, downloading it when missing.

    A present file whose hash checks out is reused. Otherwise the file is copied from torch
    hub's cache when it is there (same file name, hash checked), else downloaded into a
    temporary file (progress is logged), verified and renamed into place.

    Raises:
        StageError: unknown name, unwritable cache, hash mismatch, or no network (the message
            names the file, its URL and the path to put it at by hand).
    """
    return _fetch(name, cache, scene, timeout)[0]


def _fetch(
    name: str, cache: str | os.PathLike | None, scene: str | None, timeout: float
) -> tuple[Path, str]:
    try:
        e = entry(name)
    except KeyError as exc:
        raise StageError(
            scene,
            STAGE,
            str(exc.args[0]),
            "name a checkpoint of REGISTRY in nsff_core/priors/weights.py",
        ) from None
    target = cache_dir(cache) / e.file
    stale = ""
    if target.is_file():
        try:
            digest = verify(target, e)
        except HashMismatch as exc:
            stale = f"the file already at {target} is not it ({exc}); "
            log.warning("%s: %s; fetching it again", e.name, exc)
        else:
            log.info("%s: using %s (%s checked)", e.name, target, e.check)
            return target, digest
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StageError(
            scene,
            STAGE,
            f"cannot create the weights cache directory {target.parent}: {exc}",
            f"set config weights.cache_dir or ${ENV_VAR} to a writable directory",
        ) from None
    digest = _copy_from_torch_hub(e, target)
    if digest is None:
        digest = _download(e, target, scene, timeout, stale)
    return target, digest


def _torch_hub_dir() -> Path:
    base = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "torch",
    )
    return Path(base) / "hub" / "checkpoints"


def _copy_from_torch_hub(e: WeightsEntry, target: Path) -> str | None:
    """Copy a file torch hub already cached under the same name; its digest, or None."""
    src = _torch_hub_dir() / e.file
    if e.check == "none" or not src.is_file() or src.resolve() == target.resolve():
        return None
    try:
        digest = verify(src, e)
    except (HashMismatch, OSError) as exc:
        log.warning("%s: not using torch hub's copy: %s", e.name, exc)
        return None
    with atomic_file(target) as tmp:
        shutil.copyfile(src, tmp)
    log.info("%s: copied from torch hub's cache %s to %s", e.name, src, target)
    return digest


def _urlopen(url: str, timeout: float):
    """Open ``url`` (a seam for tests)."""
    return urllib.request.urlopen(url, timeout=timeout)


def _cannot_download(
    e: WeightsEntry, target: Path, scene: str | None, reason: str, stale: str = ""
) -> StageError:
    return StageError(
        scene,
        STAGE,
        f"{stale}cannot download checkpoint '{e.name}' (file {e.file}) from {e.url}: {reason}",
        f"download it by hand to {target} (e.g. curl -L -o '{target}' '{e.url}'; "
        f"expected {e.expected}), or point config weights.cache_dir or ${ENV_VAR} at a "
        f"directory that holds {e.file}",
    )


def _download(e: WeightsEntry, target: Path, scene: str | None, timeout: float, stale: str) -> str:
    """Download ``e`` to ``target`` through a verified temporary file; returns the sha256."""
    log.info("%s: downloading %s to %s", e.name, e.url, target)
    try:
        resp = _urlopen(e.url, timeout)
    except NETWORK_ERRORS as exc:
        raise _cannot_download(e, target, scene, _reason(exc), stale) from exc
    h = hashlib.sha256()
    done, t0 = 0, time.monotonic()
    last = t0
    with resp, atomic_file(target) as tmp:
        total = _content_length(resp)
        with open(tmp, "wb") as f:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except NETWORK_ERRORS as exc:
                    raise _cannot_download(e, target, scene, _reason(exc), stale) from exc
                if not chunk:
                    break
                f.write(chunk)
                h.update(chunk)
                done += len(chunk)
                now = time.monotonic()
                if now - last >= PROGRESS_EVERY_S:
                    last = now
                    log.info("%s: %s", e.name, _progress(done, total, now - t0))
        if total is not None and done != total:
            raise _cannot_download(
                e, target, scene, f"the transfer stopped after {done} of {total} bytes", stale
            )
        digest = h.hexdigest()
        if not digest_matches(e, digest):
            raise StageError(
                scene,
                STAGE,
                f"the download of '{e.name}' from {e.url} has sha256 {digest}, expected "
                f"{e.expected}",
                f"retry (the transfer may have been corrupted); if it persists the file changed "
                f"upstream: download it by hand to {target} and check it",
            )
    if e.check == "none":
        log.warning("%s: no known hash; accepted unchecked (sha256 %s)", e.name, digest)
    log.info(
        "%s: %s, done (%s checked)", e.name, _progress(done, total, time.monotonic() - t0), e.check
    )
    return digest


def _content_length(resp: Any) -> int | None:
    headers = getattr(resp, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _progress(done: int, total: int | None, seconds: float) -> str:
    mb = done / 1e6
    rate = mb / seconds if seconds > 0 else 0.0
    if total:
        return f"{mb:.1f} of {total / 1e6:.1f} MB ({100 * done / total:.0f}%, {rate:.1f} MB/s)"
    return f"{mb:.1f} MB ({rate:.1f} MB/s)"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"{exc.reason} (no network?)"
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- the rule's marker


def fetch_for_scene(
    backends: Mapping[str, Any],
    marker: str | os.PathLike,
    cache: str | os.PathLike | None = None,
    scene: str | None = None,
    *,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Fetch every checkpoint ``backends`` need and write the marker JSON (atomically).

    The marker: ``{"cache_dir", "backends", "weights": {name: {"path", "file", "url",
    "sha256", "check", "bytes"}}}``; ``weights`` is empty for weights-free backends (and then
    nothing touches the network or the cache). Returns the marker's content.
    """
    names = needed_weights(backends)
    listed: dict[str, Any] = {}
    for name in names:
        path, digest = _fetch(name, cache, scene, timeout)
        e = REGISTRY[name]
        listed[name] = {
            "path": str(path),
            "file": e.file,
            "url": e.url,
            "sha256": digest,
            "check": e.check,
            "bytes": path.stat().st_size,
        }
    content = {
        "cache_dir": str(cache_dir(cache)),
        "backends": dict(backends),
        "weights": listed,
    }
    with atomic_file(marker) as tmp:
        tmp.write_text(json.dumps(content, indent=2) + "\n")
    log.info("%d checkpoint(s) ready: %s", len(names), ", ".join(names) or "none needed")
    return content


def resolve_from_marker(
    marker: str | os.PathLike, name: str, scene: str | None = None, stage: str = STAGE
) -> Path:
    """The path of checkpoint ``name`` as listed in a ``weights.json`` marker (no download).

    For the prior rules: raises :class:`StageError` (for ``stage``) when the marker does not
    list it or the file is gone, saying how to get it.
    """
    e = entry(name)
    listed = json.loads(Path(marker).read_text()).get("weights", {})
    if name not in listed:
        raise StageError(
            scene,
            stage,
            f"{marker} does not list checkpoint '{name}' ({e.file})",
            "the weights rule did not know this backend needs it: rerun it "
            f"(snakemake --forcerun weights {marker}) and check BACKEND_WEIGHTS in "
            "nsff_core/priors/weights.py",
        )
    path = Path(listed[name]["path"])
    if not path.is_file():
        raise StageError(
            scene,
            stage,
            f"checkpoint '{name}' is missing at {path} (listed in {marker})",
            f"rerun the weights rule (snakemake --forcerun weights {marker}) or download "
            f"{e.url} by hand to {path}",
        )
    return path
