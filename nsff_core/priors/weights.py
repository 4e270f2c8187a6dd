"""Pretrained checkpoints: one registry, a hash-checked cache, and a clear offline failure.

Every checkpoint the workflow can use is an entry of :data:`REGISTRY` (file name, URL, hash).
The rule ``weights`` calls :func:`fetch_for_scene`, which fetches what the scene's backends need
(:func:`needed_weights`) into the cache directory (:func:`cache_dir`) and writes the marker
``results/{scene}/weights.json`` with the resolved paths. The prior rules read their checkpoint
paths from that marker (:func:`resolve_from_marker`) and never download; the rule ``weights`` is
a local rule, so on a cluster only the submitting machine touches the network.

Hashes. An entry can carry a full ``sha256`` and/or a ``sha256_prefix``: the leading hex
digits of the file's sha256, which torchvision and torch hub embed in their file names
(``raft_large_C_T_V1-22a6c225.pth`` -> sha256 starts with ``22a6c225``; torch hub's
``check_hash`` checks exactly this prefix). The full digests of the public checkpoints were not
known when the registry was written (they cannot be downloaded here), so no entry carries one
yet. Such entries are trusted on first use (config ``weights.trust_on_first_use``, default
true): the first time a file enters a folder (download, copy from torch hub's cache, or a file
found there by the fetch or by a loader), its prefix is checked when there is one and its full
sha256 is written to the folder's digest record ``sha256.json`` (:data:`RECORD_FILE`). From then
on every use, by the rule ``weights`` and by every loader (:func:`open_verified`), must match the
recorded digest in full; a different file is refused with a :class:`WeightsMismatch` naming the
file, both digests and what to do. A download that replaces a missing or damaged file must
match the record too, so a file changed upstream after the first fetch is refused as well. With
``trust_on_first_use: false`` only entries with a full ``sha256`` in the registry are used.

The record also keeps each file's (size, mtime_ns, ctime_ns, inode): while these are unchanged
the rule ``weights`` reuses the recorded digest instead of hashing the file again (it checks
every file of a scene, and a 1.3 GB checkpoint takes seconds to hash). Loaders never take that
shortcut: they hash the very bytes they load, read from the same open file (about a second per
GB), so what reaches a network is always what was recorded. Updates of the record take a lock (``.sha256.json.lock``, ``flock``) and replace the file
atomically, so concurrent weights jobs of several scenes merge their entries; a fetch holds a
lock per file (``.<file>.lock``), so one download of a file runs at a time and the others then
reuse it. Where the folder cannot be written (a read-only shared cache), nothing is recorded
and a warning says so: the file is then checked by its prefix only.

Loaders find the entry of a file by its name (:func:`entry_for_file`; the LPIPS files also by
the ``lpips`` package's names ``alexnet.pth`` and ``alex.pth``). A file with another name (a
checkpoint the caller chose) is not checked. Every marker records the full sha256 of each file
it lists, so a full digest can be copied into the registry once a trusted file is at hand.

Cache directory: the configured value (config ``weights.cache_dir``), else ``$NSFF_WEIGHTS_DIR``,
else ``$XDG_CACHE_HOME/nsff/weights`` (``~/.cache/nsff/weights``). The LPIPS weights of rule
``evaluate`` are resolved by the rule ``weights_evaluate`` (marker
``results/{scene}/weights_evaluate.json``), an optional fetch: it downloads only with config
``eval.lpips_fetch: true``, and a file it cannot have is listed as unavailable instead of
failing (LPIPS is then reported unavailable, or found where :mod:`nsff_core.model.metrics` looks).

Downloads go to a temporary file in the cache directory and are renamed into place only after
the hash check, so an interrupted or concurrent download never leaves a half-written checkpoint.
A file torch hub already cached (``$TORCH_HOME/hub/checkpoints``, same file name) is copied
instead of downloaded when its hash checks out.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from nsff_core.model.io import atomic_file

from ..config import STAGES
from ..errors import StageError
from .backends import weights_table

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
#: module docstring): each is trusted on first use; the torchvision and DPT entries also check
#: the 8-digit prefix their file names carry on that first use.
#: Add ``sha256="<64 hex digits>"`` to an entry once the digest of a trusted copy is known.
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
        description="detectron2 model zoo Mask R-CNN R50-FPN 3x, COCO (no published hash)",
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
        description="LPIPS v0.1 linear layers for AlexNet (no published hash)",
    ),
)

#: Checkpoints per (stage, backend), read from the backend registry
#: (:func:`nsff_core.priors.backends.weights_table`, which also lists DPT's ``dpt_model`` values
#: as keys). A backend that is not listed needs no weights (dis, epipolar, sparse, none); an
#: unknown backend is reported by its own stage, not here.
BACKEND_WEIGHTS: dict[tuple[str, str], tuple[str, ...]] = weights_table()


#: Other names under which loaders accept a registry file (the ``lpips`` package's names of the
#: LPIPS files, which :func:`nsff_core.model.metrics.lpips_weight_files` also looks for).
FILE_ALIASES: dict[str, str] = {"alexnet.pth": "alexnet", "alex.pth": "lpips_alex"}

#: The digest record of a folder of checkpoints: ``{"files": {file name: {"sha256", "entry",
#: "source", "recorded", "stat"}}}`` (``stat`` = [size, mtime_ns, ctime_ns, inode] when hashed).
RECORD_FILE = "sha256.json"


class HashMismatch(ValueError):
    """A file's sha256 is not the registered one."""


class WeightsMismatch(StageError):
    """A checkpoint's sha256 differs from the registry's or the recorded one (a user error:
    the message names the file, both digests and what to do)."""


class NotFetched(StageError):
    """A checkpoint could not be had, for no fault of its bytes: the download failed (no
    network, HTTP error, a transfer cut short), or downloads are off and the cache lacks it, or
    it has no full sha256 while ``trust_on_first_use`` is false. An optional fetch
    (:func:`fetch_for_scene` with ``optional``) lists it as unavailable instead of failing."""


# --------------------------------------------------------------------------- lookup


def entry(name: str) -> WeightsEntry:
    """The registry entry ``name``; ``KeyError`` naming the known entries otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown checkpoint {name!r}; known: {sorted(REGISTRY)}") from None


def entry_for_file(file_name: str) -> WeightsEntry | None:
    """The registry entry whose file is named ``file_name`` (or one of its
    :data:`FILE_ALIASES`), else ``None``."""
    for e in REGISTRY.values():
        if e.file == file_name:
            return e
    alias = FILE_ALIASES.get(file_name)
    return REGISTRY.get(alias) if alias else None


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
            "flow": "raft"}``, one backend per stage (the config schema's enums); ``None``
            means the stage's default (:mod:`nsff_core.config`). Weights-free and unknown
            backends add nothing.
    """
    names: list[str] = []
    for stage, value in backends.items():
        if value is None and stage in STAGES:
            value = getattr(STAGES[stage](), "backend", None)
        if value is None:
            continue
        for name in BACKEND_WEIGHTS.get((stage, str(value).strip().lower()), ()):
            if name not in names:
                names.append(name)
    return names


# --------------------------------------------------------------------------- hashes


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def digest_matches(e: WeightsEntry, digest: str) -> bool:
    """Whether ``digest`` satisfies the registry entry: the full sha256 if known, else its
    prefix, else anything (the digest record then decides, see :func:`open_verified`)."""
    digest = digest.lower()
    if e.sha256:
        return digest == e.sha256.lower()
    if e.sha256_prefix:
        return digest.startswith(e.sha256_prefix.lower())
    return True


def verify(path: str | os.PathLike, e: WeightsEntry | str) -> str:
    """Check a file against its registry entry alone (no record); returns its full sha256.

    Raises:
        HashMismatch: the digest differs from the entry's sha256 (or its prefix).
    """
    e = entry(e) if isinstance(e, str) else e
    digest = sha256_file(path)
    if not digest_matches(e, digest):
        raise HashMismatch(f"{path} has sha256 {digest}, expected {e.expected}")
    return digest


# --------------------------------------------------------------------------- digest record


@contextlib.contextmanager
def _locked(path: Path, scene: str | None, stage: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the lock file ``path`` (created when missing).

    A symbolic link is never followed (``O_NOFOLLOW``): one planted in a shared cache is
    refused. Best effort otherwise: where the file cannot be created (read-only folder) or the
    file system has no locks, the block runs unlocked (logged). The file is opened read-only,
    which is enough for ``flock``, so members of a group can lock a file another one created.
    """
    fd: int | None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StageError(
                scene,
                stage,
                f"the lock file {path} is a symbolic link; refusing to follow it",
                f"remove {path} (it is only a lock; whoever made it a link may be tampering "
                "with the weights cache)",
            ) from None
        log.debug("cannot open the lock file %s (%s); going on without it", path, exc)
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another process that holds %s", path)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:  # e.g. ENOLCK: a network file system without locks
                log.warning("cannot lock %s (%s); going on without the lock", path, exc)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the lock


def _stat_key(st: os.stat_result) -> list[int]:
    """What must stay equal for a recorded digest to be reused without hashing."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def read_record(
    folder: str | os.PathLike, scene: str | None = None, stage: str = STAGE
) -> dict[str, dict[str, Any]]:
    """The digest record of ``folder``: file name -> entry (``{}`` when there is none).

    Raises:
        StageError: the record exists but cannot be read or is not a valid record.
    """
    path = Path(folder) / RECORD_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StageError(
            scene,
            stage,
            f"cannot read the checkpoint digest record {path}: {exc}",
            "make it readable (it lists the sha256 every checkpoint in that folder must have)",
        ) from None
    try:
        files = json.loads(text)["files"]
        for info in files.values():
            if not _is_digest(info["sha256"]):
                raise ValueError(f"{info['sha256']!r} is not a sha256 hex digest")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StageError(
            scene,
            stage,
            f"the checkpoint digest record {path} is damaged ({type(exc).__name__}: {exc})",
            f"restore it from a backup, or delete it: the digests of the files in {path.parent} "
            "are then recorded again on their next use, trusting the files as they are then",
        ) from None
    return files


def _is_digest(value: Any) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def _record(
    folder: Path, file: str, info: dict[str, Any], scene: str | None, stage: str
) -> dict[str, Any] | None:
    """Merge ``info`` for ``file`` into the record of ``folder`` (under its lock, atomically).

    Returns the entry another process recorded meanwhile with a different digest (nothing is
    written then; a digest from the registry replaces any), else ``None``. A record that cannot
    be written is logged, not raised.
    """
    try:
        with _locked(folder / f".{RECORD_FILE}.lock", scene, stage):
            files = read_record(folder, scene, stage)  # again, under the lock
            old = files.get(file)
            if old is not None and old["sha256"] != info["sha256"] and info["source"] != "registry":
                return old
            files[file] = info
            content = {
                "about": "sha256 of the pretrained checkpoints in this folder, recorded by "
                "nsff_core.priors.weights; every later use of a file must match",
                "files": dict(sorted(files.items())),
            }
            with atomic_file(folder / RECORD_FILE) as tmp:
                tmp.write_text(json.dumps(content, indent=2) + "\n")
    except OSError as exc:
        log.warning(
            "cannot record the sha256 of %s in %s (%s): it was checked by its prefix at most "
            "and will be trusted again at its next use",
            folder / file,
            folder / RECORD_FILE,
            exc,
        )
    return None


def _record_info(e: WeightsEntry, digest: str, source: str, stat: list[int] | None) -> dict:
    return {
        "sha256": digest,
        "entry": e.name,
        "source": source,
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "stat": stat,
    }


def _hash_open_file(f: BinaryIO) -> tuple[str, list[int] | None]:
    """sha256 of an open file from its start, and its stat key (``None`` when the file changed
    while it was read, so that no stale key is recorded). Leaves the file at its start."""
    before = _stat_key(os.fstat(f.fileno()))
    f.seek(0)
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(CHUNK), b""):
        h.update(chunk)
    f.seek(0)
    after = _stat_key(os.fstat(f.fileno()))
    return h.hexdigest(), (before if before == after else None)


def _mismatch(
    e: WeightsEntry,
    path: Path,
    digest: str,
    expected: str,
    source: str,
    scene: str | None,
    stage: str,
) -> WeightsMismatch:
    record = path.parent / RECORD_FILE
    if source == "registry":
        said = "the registry (nsff_core/priors/weights.py) says"
        trust = (
            "if a fresh download differs too, the file changed upstream: check it before "
            f"updating the sha256 of '{e.name}' in REGISTRY"
        )
    else:
        said = f"the digest recorded when it was first used ({record}, {source}) is"
        trust = (
            f'if the publisher replaced the file and you trust the new one, also delete the entry "'
            f'{path.name}" from {record} (or that whole file, which re-trusts every file in '
            f"{path.parent})"
        )
    return WeightsMismatch(
        scene,
        stage,
        f"checkpoint {path} has sha256 {digest}, but {said} {expected}: the file was "
        "corrupted or replaced",
        f"delete {path} and fetch it again (the weights rule downloads it: snakemake "
        f"--forcerun weights; or {e.url}); {trust}",
    )


def _untrusted(e: WeightsEntry, path: Path, scene: str | None, stage: str) -> StageError:
    return StageError(
        scene,
        stage,
        f"checkpoint '{e.name}' ({path}) has no full sha256 in the registry and "
        "weights.trust_on_first_use is false",
        f"add its digest to the entry '{e.name}' of REGISTRY in nsff_core/priors/weights.py "
        f'(sha256="<64 hex digits>", computed with sha256sum on a copy of {e.url} you trust), '
        "or set weights.trust_on_first_use: true to record the digest of the first file "
        "fetched, or choose a weights-free backend",
    )


def _check_open(
    f: BinaryIO,
    path: Path,
    e: WeightsEntry,
    scene: str | None,
    stage: str,
    trust_on_first_use: bool,
    use_stat_cache: bool = False,
) -> tuple[str, str]:
    """Verify the open file ``f`` (found at ``path``) as entry ``e``: ``(sha256, how)``.

    Against the registry's full digest when it has one, else against the digest record of the
    file's folder; with neither, this is the first use: the prefix is checked and the digest
    recorded (or refused without ``trust_on_first_use``). ``use_stat_cache``: reuse the
    recorded digest without hashing while the file's stat key is unchanged (the rule
    ``weights`` does, to check a cache of several GB per scene cheaply; loaders never do, so
    the bytes they load are always hashed). Raises :class:`WeightsMismatch` or
    :class:`StageError`.
    """
    registry = e.sha256.lower() if e.sha256 else None
    if registry is None and not trust_on_first_use:
        raise _untrusted(e, path, scene, stage)
    old = read_record(path.parent, scene, stage).get(path.name)
    key = _stat_key(os.fstat(f.fileno()))
    if (
        use_stat_cache
        and old is not None
        and old.get("stat") == key
        and old["sha256"] == (registry or old["sha256"])
    ):
        digest, fresh = old["sha256"], key  # not changed since it was hashed
    else:
        digest, fresh = _hash_open_file(f)
    if registry is not None:
        if digest != registry:
            raise _mismatch(e, path, digest, registry, "registry", scene, stage)
        how = "registry-sha256"
    elif old is not None:
        if digest != old["sha256"]:
            raise _mismatch(e, path, digest, old["sha256"], old.get("recorded", ""), scene, stage)
        how = "recorded-sha256"
    else:
        if not digest_matches(e, digest):
            raise WeightsMismatch(
                scene,
                stage,
                f"checkpoint {path} has sha256 {digest}, expected {e.expected}: it is not "
                f"'{e.name}' ({e.description or e.file})",
                f"delete {path} and fetch it again (the weights rule downloads it: snakemake "
                f"--forcerun weights; or {e.url})",
            )
        log.warning(
            "%s: no published full sha256; trusting %s on first use and recording its sha256 %s "
            "in %s: every later use must match",
            e.name,
            path,
            digest,
            path.parent / RECORD_FILE,
        )
        how = "recorded-sha256"
    if fresh is not None and (old is None or old.get("stat") != fresh or old["sha256"] != digest):
        source = "registry" if registry else (old or {}).get("source", "first use")
        other = _record(
            path.parent, path.name, _record_info(e, digest, source, fresh), scene, stage
        )
        if other is not None:
            raise _mismatch(
                e, path, digest, other["sha256"], other.get("recorded", ""), scene, stage
            )
    return digest, how


@contextlib.contextmanager
def open_verified(
    path: str | os.PathLike,
    scene: str | None = None,
    stage: str = STAGE,
    *,
    trust_on_first_use: bool = True,
) -> Iterator[BinaryIO]:
    """Open a pretrained checkpoint for reading, after checking its full sha256.

    Loaders read from the yielded file object (at its start), so the bytes they load are those
    of the file that was checked, even if the path is replaced meanwhile. A file whose name is
    a registry file (:func:`entry_for_file`) is checked as :func:`_check_open` describes; a file
    with another name is the caller's choice and is opened unchecked.

    Raises:
        WeightsMismatch: the file differs from the registry's or the recorded digest.
        StageError: no full digest is known and ``trust_on_first_use`` is false, or the digest
            record is damaged.
    """
    path = Path(path)
    e = entry_for_file(path.name)
    with open(path, "rb") as f:
        if e is None:
            log.debug("%s is not a registry file name: loaded without a hash check", path)
        else:
            digest, how = _check_open(f, path, e, scene, stage, trust_on_first_use)
            log.info("%s: %s matches (%s)", path, how, digest)
        yield f


def verify_file(
    path: str | os.PathLike,
    e: WeightsEntry | str,
    scene: str | None = None,
    stage: str = STAGE,
    *,
    trust_on_first_use: bool = True,
) -> tuple[str, str]:
    """Check a file as entry ``e`` (registry or recorded digest, see :func:`open_verified`);
    returns ``(sha256, how)`` with ``how`` ``"registry-sha256"`` or ``"recorded-sha256"``.

    Unlike :func:`open_verified` it reuses the recorded digest while the file's (size,
    mtime_ns, ctime_ns, inode) are those recorded, instead of hashing it again.
    """
    e = entry(e) if isinstance(e, str) else e
    path = Path(path)
    with open(path, "rb") as f:
        return _check_open(f, path, e, scene, stage, trust_on_first_use, use_stat_cache=True)


def _remember(
    e: WeightsEntry, target: Path, digest: str, source: str, scene: str | None, stage: str = STAGE
) -> str:
    """Record the digest of a file just put at ``target``; returns how it was checked."""
    info = _record_info(e, digest, "registry" if e.sha256 else source, _stat_key(target.stat()))
    other = _record(target.parent, target.name, info, scene, stage)
    if other is not None:  # another process recorded a different file meanwhile
        raise _mismatch(e, target, digest, other["sha256"], other.get("recorded", ""), scene, stage)
    if not e.sha256:
        log.warning(
            "%s: no published full sha256; recorded the sha256 %s of %s in %s on first use: "
            "every later use must match",
            e.name,
            digest,
            target,
            target.parent / RECORD_FILE,
        )
    return "registry-sha256" if e.sha256 else "recorded-sha256"


# --------------------------------------------------------------------------- fetching


def fetch(
    name: str,
    cache: str | os.PathLike | None = None,
    scene: str | None = None,
    *,
    timeout: float = 60.0,
    trust_on_first_use: bool = True,
) -> Path:
    """The path of checkpoint ``name`` in the cache, downloading it when missing.

    A present file that matches the registry's or the recorded sha256 is reused (a present
    file without either is trusted on first use: prefix checked, digest recorded). Otherwise
    the file is copied from torch hub's cache when it is there (same file name, hash checked),
    else downloaded into a temporary file (progress is logged), verified and renamed into
    place; a file that has a recorded digest must match it.

    Raises:
        StageError: unknown name, unwritable cache, hash mismatch, no network (the message
            names the file, its URL and the path to put it at by hand), or no full sha256 in
            the registry with ``trust_on_first_use`` false.
    """
    return _fetch(name, cache, scene, timeout, trust_on_first_use)[0]


def _fetch(
    name: str,
    cache: str | os.PathLike | None,
    scene: str | None,
    timeout: float,
    trust_on_first_use: bool = True,
    download: bool = True,
    stage: str = STAGE,
) -> tuple[Path, str, str]:
    """``(path, sha256, how)`` of checkpoint ``name`` (see :func:`fetch`).

    ``download`` false: only a file already in the cache or in torch hub's cache is used; else
    :class:`NotFetched` is raised before the network (or the cache folder) is touched.
    ``stage``: the rule named in errors.
    """
    try:
        e = entry(name)
    except KeyError as exc:
        raise StageError(
            scene,
            stage,
            str(exc.args[0]),
            "name a checkpoint of REGISTRY in nsff_core/priors/weights.py",
        ) from None
    target = cache_dir(cache) / e.file
    if not e.sha256 and not trust_on_first_use:  # before any download
        refused = _untrusted(e, target, scene, stage)
        raise NotFetched(scene, stage, refused.cause, refused.hint)
    if not download and not target.is_file() and not (_torch_hub_dir() / e.file).is_file():
        raise _not_cached(e, target, scene, stage)
    if not target.is_file():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StageError(
                scene,
                stage,
                f"cannot create the weights cache directory {target.parent}: {exc}",
                f"set config weights.cache_dir or ${ENV_VAR} to a writable directory",
            ) from None
    # one fetch of a file at a time: a second job waits, then reuses the first one's download
    with _locked(target.parent / f".{e.file}.lock", scene, stage):
        stale = ""
        if target.is_file():
            try:
                digest, how = verify_file(target, e, scene, stage)
            except WeightsMismatch as exc:
                if not download:  # nothing to replace it with: the user has to act
                    raise
                stale = f"the file already at {target} is not it ({exc.cause}); "
                log.warning("%s: %s; fetching it again", e.name, exc.cause)
            else:
                log.info("%s: using %s (%s checked)", e.name, target, how)
                return target, digest, how
        recorded = read_record(target.parent, scene, stage).get(e.file)
        expected = e.sha256.lower() if e.sha256 else (recorded or {}).get("sha256")
        digest = _copy_from_torch_hub(e, target, expected)
        source = "first use (copied from torch hub's cache)"
        if digest is None:
            if not download:
                raise _not_cached(e, target, scene, stage)
            digest = _download(e, target, scene, timeout, stale, recorded, stage)
            source = "first use (downloaded)"
        how = _remember(e, target, digest, source, scene, stage)
    return target, digest, how


def _not_cached(e: WeightsEntry, target: Path, scene: str | None, stage: str) -> NotFetched:
    return NotFetched(
        scene,
        stage,
        f"checkpoint '{e.name}' (file {e.file}) is not in the weights cache ({target}) and "
        "downloads are off",
        f"allow the download (config eval.lpips_fetch: true for the LPIPS weights), or put "
        f"{e.url} at {target} by hand",
    )


def _torch_hub_dir() -> Path:
    base = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "torch",
    )
    return Path(base) / "hub" / "checkpoints"


def _copy_from_torch_hub(e: WeightsEntry, target: Path, expected: str | None) -> str | None:
    """Copy a file torch hub already cached under the same name; its digest, or None.

    The copy is hashed as it is written and kept only when it matches the registry (full
    digest or prefix) and ``expected`` (the recorded digest, if any). An entry without any
    published hash never takes torch hub's file: nothing would vouch for it.
    """
    src = _torch_hub_dir() / e.file
    if e.check == "none" or not src.is_file() or src.resolve() == target.resolve():
        return None

    class _NotIt(Exception):
        pass

    try:
        with atomic_file(target) as tmp:
            h = hashlib.sha256()
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                for chunk in iter(lambda: fin.read(CHUNK), b""):
                    fout.write(chunk)
                    h.update(chunk)
            digest = h.hexdigest()
            if not digest_matches(e, digest) or (expected and digest != expected):
                raise _NotIt(f"{src} has sha256 {digest}, expected {expected or e.expected}")
    except (_NotIt, OSError) as exc:
        log.warning("%s: not using torch hub's copy: %s", e.name, exc)
        return None
    log.info("%s: copied from torch hub's cache %s to %s", e.name, src, target)
    return digest


def _urlopen(url: str, timeout: float):
    """Open ``url`` (a seam for tests)."""
    return urllib.request.urlopen(url, timeout=timeout)


def _expected_text(e: WeightsEntry, recorded: dict[str, Any] | None) -> str:
    if e.sha256 or not recorded:
        return e.expected
    return f"sha256 {recorded['sha256']} (recorded {recorded.get('recorded', '')})"


def _cannot_download(
    e: WeightsEntry,
    target: Path,
    scene: str | None,
    reason: str,
    stale: str = "",
    recorded: dict[str, Any] | None = None,
    stage: str = STAGE,
) -> StageError:
    # with a wrong file in the cache (``stale``) this is not merely "not fetched": the cache
    # holds something that is not the checkpoint, which even an optional fetch reports
    cls = StageError if stale else NotFetched
    return cls(
        scene,
        stage,
        f"{stale}cannot download checkpoint '{e.name}' (file {e.file}) from {e.url}: {reason}",
        f"download it by hand to {target} (e.g. curl -L -o '{target}' '{e.url}'; "
        f"expected {_expected_text(e, recorded)}), or point config weights.cache_dir or "
        f"${ENV_VAR} at a directory that holds {e.file}",
    )


def _download(
    e: WeightsEntry,
    target: Path,
    scene: str | None,
    timeout: float,
    stale: str,
    recorded: dict[str, Any] | None = None,
    stage: str = STAGE,
) -> str:
    """Download ``e`` to ``target`` through a verified temporary file; returns the sha256.

    The download must match the registry (full digest or prefix) and, when the file was used
    before, the digest recorded then (``recorded``: its entry of the digest record).
    """
    log.info("%s: downloading %s to %s", e.name, e.url, target)
    try:
        resp = _urlopen(e.url, timeout)
    except NETWORK_ERRORS as exc:
        raise _cannot_download(e, target, scene, _reason(exc), stale, recorded, stage) from exc
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
                    raise _cannot_download(
                        e, target, scene, _reason(exc), stale, recorded, stage
                    ) from exc
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
                e,
                target,
                scene,
                f"the transfer stopped after {done} of {total} bytes",
                stale,
                recorded,
                stage,
            )
        digest = h.hexdigest()
        if not digest_matches(e, digest):
            raise StageError(
                scene,
                stage,
                f"the download of '{e.name}' from {e.url} has sha256 {digest}, expected "
                f"{e.expected}",
                f"retry (the transfer may have been corrupted); if it persists the file changed "
                f"upstream: download it by hand to {target} and check it",
            )
        if recorded and not e.sha256 and digest != recorded["sha256"]:
            record = target.parent / RECORD_FILE
            raise WeightsMismatch(
                scene,
                stage,
                f"the download of '{e.name}' from {e.url} has sha256 {digest}, but the file "
                f"first used here had {recorded['sha256']} (recorded in {record} on "
                f"{recorded.get('recorded', '?')}): the file changed upstream or in transit",
                f"retry; if it persists and you trust the new file (the publisher replaced it), "
                f'delete the entry "{e.file}" from {record} and rerun',
            )
    log.info("%s: %s, done", e.name, _progress(done, total, time.monotonic() - t0))
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
    trust_on_first_use: bool = True,
    optional: bool = False,
    download: bool = True,
    stage: str = STAGE,
) -> dict[str, Any]:
    """Fetch every checkpoint ``backends`` need and write the marker JSON (atomically).

    The marker: ``{"cache_dir", "backends", "weights": {name: {"path", "file", "url",
    "sha256", "check", "bytes"}}}`` with ``check`` ``"registry-sha256"`` (the registry's full
    digest) or ``"recorded-sha256"`` (the digest recorded on first use, see the module
    docstring); ``weights`` is empty for weights-free backends (and then nothing touches the
    network or the cache). ``trust_on_first_use`` is config ``weights.trust_on_first_use``.

    Rule ``weights_evaluate`` (LPIPS, which evaluation can do without) passes ``optional``: a
    checkpoint that cannot be had (:class:`NotFetched`: no network, not in the cache while
    ``download`` is false, no full sha256 while ``trust_on_first_use`` is false) is then a
    logged warning and an entry ``"unavailable": {name: reason}`` of the marker instead of an
    error; a file that fails its hash check still raises. ``download`` false (config
    ``eval.lpips_fetch: false``): only files already in the cache or in torch hub's cache are
    used and the network is never opened. ``stage``: the rule named in errors.

    Returns the marker's content.
    """
    names = needed_weights(backends)
    listed: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        try:
            path, digest, how = _fetch(
                name, cache, scene, timeout, trust_on_first_use, download, stage
            )
        except NotFetched as exc:
            if not optional:
                raise
            log.warning("%s is unavailable (optional, going on without it): %s", name, exc.cause)
            unavailable[name] = exc.cause
            continue
        e = REGISTRY[name]
        listed[name] = {
            "path": str(path),
            "file": e.file,
            "url": e.url,
            "sha256": digest,
            "check": how,
            "bytes": path.stat().st_size,
        }
    content: dict[str, Any] = {
        "cache_dir": str(cache_dir(cache)),
        "backends": dict(backends),
        "weights": listed,
    }
    if optional:
        content["download"] = download
        content["unavailable"] = unavailable
    with atomic_file(marker) as tmp:
        tmp.write_text(json.dumps(content, indent=2) + "\n")
    log.info("%d checkpoint(s) ready: %s", len(listed), ", ".join(listed) or "none needed")
    if unavailable:
        log.warning(
            "%d optional checkpoint(s) unavailable: %s", len(unavailable), ", ".join(unavailable)
        )
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
            f"(snakemake --forcerun weights {marker}) and check the backend's weights in "
            "nsff_core/priors/backends.py",
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
