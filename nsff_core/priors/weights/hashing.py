"""Hash checks of local checkpoint files, and the digest record of their folder.

No network code: the loaders of :mod:`nsff_core.priors.nets` open their pretrained files
through :func:`open_verified`, and the rule ``weights``
(:mod:`nsff_core.priors.weights.fetching`) checks the files it keeps or fetches with
:func:`verify_file`.

A registry entry (:mod:`nsff_core.priors.weights.registry`) without a full ``sha256`` is
trusted on first use (config ``weights.trust_on_first_use``, default true): the first time a
file enters a folder (download, copy from torch hub's cache, or a file found there by the fetch
or by a loader), its prefix is checked when there is one and its full sha256 is written to the
folder's digest record ``sha256.json`` (:data:`RECORD_FILE`). From then on every use, by the
rule ``weights`` and by every loader (:func:`open_verified`), must match the recorded digest in
full; a different file is refused with a :class:`WeightsMismatch` naming the file, both digests
and what to do. A download that replaces a missing or damaged file must match the record too,
so a file changed upstream after the first fetch is refused as well. With
``trust_on_first_use: false`` only entries with a full ``sha256`` in the registry are used.

The record also keeps each file's (size, mtime_ns, ctime_ns, inode): while these are unchanged
the rule ``weights`` reuses the recorded digest instead of hashing the file again (it checks
every file of a scene, and a 1.3 GB checkpoint takes seconds to hash). Loaders never take that
shortcut: they hash the very bytes they load, read from the same open file (about a second per
GB), so what reaches a network is always what was recorded. Updates of the record take a lock
(``.sha256.json.lock``, ``flock``) and replace the file atomically, so concurrent weights jobs of
several scenes merge their entries; a fetch holds a lock per file (``.<file>.lock``), so one
download of a file runs at a time and the others then reuse it. Where the folder cannot be
written (a read-only shared cache), nothing is recorded and a warning says so: the file is then
checked by its prefix only.

Loaders find the entry of a file by its name
(:func:`~nsff_core.priors.weights.registry.entry_for_file`); a file whose name is no registry
file is the caller's choice and is opened unchecked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from nsff_core.model.io import atomic_file

from ...errors import StageError
from .registry import STAGE, WeightsEntry, entry, entry_for_file

#: one logger for the whole package, under the name its lines have always had
log = logging.getLogger(__package__)

CHUNK = 1 << 20

#: The digest record of a folder of checkpoints: ``{"files": {file name: {"sha256", "entry",
#: "source", "recorded", "stat"}}}`` (``stat`` = [size, mtime_ns, ctime_ns, inode] when hashed).
RECORD_FILE = "sha256.json"


class HashMismatch(ValueError):
    """A file's sha256 is not the registered one."""


class WeightsMismatch(StageError):
    """A checkpoint's sha256 differs from the registry's or the recorded one (a user error:
    the message names the file, both digests and what to do)."""


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
        said = "the registry (nsff_core/priors/weights/registry.py) says"
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
        f"add its digest to the entry '{e.name}' of REGISTRY in "
        "nsff_core/priors/weights/registry.py "
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
