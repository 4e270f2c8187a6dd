"""Fetching checkpoints for the rule ``weights``: the cache, torch hub's cache, downloads.

The rule ``weights`` calls :func:`fetch_for_scene`, which fetches what the scene's backends need
(:func:`~nsff_core.priors.weights.registry.needed_weights`) into the cache directory
(:func:`~nsff_core.priors.weights.registry.cache_dir`) and writes the marker
``results/{scene}/weights.json`` with the resolved paths. The prior rules read their checkpoint
paths from that marker (:func:`resolve_from_marker`) and never download; the rule ``weights`` is
a local rule, so on a cluster only the submitting machine touches the network. Every marker
records the full sha256 of each file it lists, so a full digest can be copied into the registry
once a trusted file is at hand.

Every file kept or fetched is checked by :mod:`nsff_core.priors.weights.hashing` (registry or
recorded sha256, trusted on first use). The LPIPS weights of rule ``evaluate`` are resolved by
the rule ``weights_evaluate`` (marker ``results/{scene}/weights_evaluate.json``), an optional
fetch: it downloads only with config ``eval.lpips_fetch: true``, and a file it cannot have is
listed as unavailable instead of failing (LPIPS is then reported unavailable, or found where
:mod:`nsff_core.model.metrics` looks).

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
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nsff_core.model.io import atomic_file

from ...errors import StageError
from .hashing import (
    CHUNK,
    RECORD_FILE,
    WeightsMismatch,
    _locked,
    _remember,
    _untrusted,
    digest_matches,
    read_record,
    verify_file,
)
from .registry import ENV_VAR, REGISTRY, STAGE, WeightsEntry, cache_dir, entry, needed_weights

#: one logger for the whole package, under the name its lines have always had
log = logging.getLogger(__package__)

#: seconds between progress lines of a download
PROGRESS_EVERY_S = 5.0
#: what a failed download can raise (URLError and socket errors are OSErrors)
NETWORK_ERRORS = (OSError, http.client.HTTPException, ValueError)


class NotFetched(StageError):
    """A checkpoint could not be had, for no fault of its bytes: the download failed (no
    network, HTTP error, a transfer cut short), or downloads are off and the cache lacks it, or
    it has no full sha256 while ``trust_on_first_use`` is false. An optional fetch
    (:func:`fetch_for_scene` with ``optional``) lists it as unavailable instead of failing."""


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
            "name a checkpoint of REGISTRY in nsff_core/priors/weights/registry.py",
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
    digest) or ``"recorded-sha256"`` (the digest recorded on first use, see
    :mod:`nsff_core.priors.weights.hashing`); ``weights`` is empty for weights-free backends
    (and then nothing touches the network or the cache). ``trust_on_first_use`` is config
    ``weights.trust_on_first_use``.

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
