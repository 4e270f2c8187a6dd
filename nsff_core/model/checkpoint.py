"""Our training checkpoints: the one loader, the finiteness check and a verified save.

Every read of a checkpoint that training wrote goes through :func:`load_checkpoint`: the resume
of an interrupted run (the checks in :mod:`nsff_core.workflow.stages.train` and Lightning's own restore, through
:class:`VerifiedCheckpointIO`), rendering and evaluation (:func:`load_system`). It

- always unpickles with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and
  dicts only, never code. The argument is given explicitly, so an environment variable such as
  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn the restriction off for these loads;
- turns every failure to decode (a truncated or garbled file, an object that ``weights_only``
  refuses, no ``state_dict``) into :class:`~nsff_core.errors.CorruptFileError` naming the file
  and the rule that writes it (``train``);
- refuses a checkpoint whose weights or optimizer state hold NaN or inf (a diverged run).

Every save during training goes through :class:`VerifiedCheckpointIO` (Lightning's periodic
checkpoints and the final one): a state with non-finite values is never written
(:class:`NonFiniteStateError`); the file is written under a scratch name in the same folder,
flushed to disk, read back with :func:`load_checkpoint` and only then renamed into place (the
``last.ckpt`` it replaces is kept as ``previous.ckpt``). A failed write raises a
:class:`~nsff_core.errors.StageError` naming the file, never a silent skip (Lightning's default
writer, through fsspec, ignores some failed writes when an older file exists at the path).
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import CheckpointIO

from nsff_core.errors import CorruptFileError, StageError

from . import io

log = logging.getLogger(__name__)

#: the rule that writes checkpoints (named in the errors about them)
MADE_BY = "train"
#: the name of a run's newest checkpoint and of the one it replaced (see :func:`save_checkpoint`)
LAST = "last.ckpt"
PREVIOUS = "previous.ckpt"


class NonFiniteStateError(ValueError):
    """A training state to be saved holds NaN or inf (the run diverged).

    Args:
        path: where it was to be written.
        names: the non-finite tensors, as :func:`nonfinite_tensors` names them.
        step: the training step of the state (``global_step``), if known.
    """

    def __init__(self, path: object, names: list[str], step: int | None) -> None:
        self.path, self.names, self.step = str(path), names, step
        super().__init__(
            f"not writing {self.path}: {len(names)} tensor(s) hold NaN or inf values"
            f" (first: {names[0]}) at step {step}"
        )


def _state_tensors(checkpoint: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every floating-point tensor of the weights (``state_dict``) and the
    optimizer state (``optimizer_states``), the parts a diverged run makes non-finite. Other
    entries may legitimately hold inf (Lightning keeps ``kth_value = inf`` in callback state)."""
    for name, value in checkpoint.get("state_dict", {}).items():
        if isinstance(value, torch.Tensor):
            yield name, value
    for i, opt in enumerate(checkpoint.get("optimizer_states", [])):
        for pid, state in opt.get("state", {}).items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    yield f"optimizer_states[{i}].state[{pid}].{key}", value


def nonfinite_tensors(checkpoint: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of the weights and optimizer state that hold NaN or
    inf, in checkpoint order (``state_dict`` keys, then ``optimizer_states[i].state[j].key``).

    One device synchronisation for all tensors (the flags are stacked before they are read).
    """
    named = [(n, t) for n, t in _state_tensors(checkpoint) if t.is_floating_point() and t.numel()]
    if not named:
        return []
    device = named[0][1].device
    flags = torch.stack([torch.isfinite(t).all().to(device) for _, t in named]).tolist()
    return [n for (n, _), ok in zip(named, flags, strict=True) if not ok]


def _cause(err: BaseException) -> str:
    """A short cause from a decoder's exception: its type and first sentence (torch appends
    paragraphs of advice), or for an object that weights_only loading refuses, which one."""
    text = str(err).strip()
    refused = "WeightsUnpickler error:"
    if refused in text:
        detail = text.split(refused, 1)[1].strip().split(". ")[0][:200]
        return f"holds objects other than tensors and plain data ({detail})"
    lines = text.splitlines()
    if not lines:
        return type(err).__name__
    return f"{type(err).__name__}: {lines[0].split('. ')[0][:200]}"


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", check_finite: bool = True
) -> dict[str, Any]:
    """Read a checkpoint written by training (``weights_only=True``, see the module docstring).

    Args:
        path: the ``.ckpt`` file.
        map_location: as :func:`torch.load` (default: CPU).
        check_finite: refuse weights or optimizer state with NaN or inf.

    Returns:
        the checkpoint dict (``state_dict``, ``hyper_parameters``, Lightning's training state).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CorruptFileError: the file does not decode, is not a training checkpoint, or (with
            ``check_finite``) holds non-finite weights; ``made_by`` is ``"train"``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_file() and not zipfile.is_zipfile(path):
        # torch writes zip archives; without the directory at its end the file was cut short
        # (a kill or a full disk while it was copied) or is something else
        raise CorruptFileError(
            path,
            f"truncated or not a checkpoint ({path.stat().st_size} bytes, no zip directory at"
            " its end)",
            made_by=MADE_BY,
        )
    try:
        # weights_only given explicitly: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only overrides loads
        # that leave it unset
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # any decoder failure of a file we wrote: it is corrupt
        raise CorruptFileError(path, _cause(err), made_by=MADE_BY) from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CorruptFileError(path, "not a training checkpoint (no state_dict)", MADE_BY)
    if check_finite:
        bad = nonfinite_tensors(ckpt)
        if bad:
            raise CorruptFileError(
                path,
                f"{len(bad)} tensor(s) hold NaN or inf values (first: {bad[0]}): the training"
                " run that wrote it diverged",
                made_by=MADE_BY,
            )
    return ckpt


#: the scene facts that checkpoints written before :class:`~nsff_core.model.data.SceneMeta`
#: kept next to ``cfg`` and ``steps_per_epoch`` in their flat ``hyper_parameters`` (the last
#: three only in later ones)
FLAT_META_KEYS = ("num_frames", "K", "c2w", "normalization", "hw", "frame_ids")


def system_arguments(hparams: dict[str, Any]) -> dict[str, Any]:
    """:class:`~nsff_core.model.system.NSFFSystem`'s arguments from a checkpoint's
    ``hyper_parameters``: ``{"cfg", "meta", "steps_per_epoch"}`` as stored, or built from the
    flat form of older checkpoints (``cfg``, ``steps_per_epoch`` and the :data:`FLAT_META_KEYS`
    side by side).

    Raises:
        KeyError: a key that every checkpoint has is missing.
    """
    if "meta" in hparams:
        return dict(hparams)
    meta = {k: hparams[k] for k in FLAT_META_KEYS if k in hparams}
    return {"cfg": hparams["cfg"], "meta": meta, "steps_per_epoch": hparams["steps_per_epoch"]}


def load_system(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """The trained :class:`~nsff_core.model.system.NSFFSystem` of a checkpoint, in eval mode on
    ``device``.

    Raises:
        CorruptFileError: see :func:`load_checkpoint`; also when the checkpoint does not fit
            this version's model (other hyper-parameters or weight names).
    """
    from .system import NSFFSystem

    ckpt = load_checkpoint(path, map_location="cpu")
    try:
        # the constructor's arguments are plain data (save_hyperparameters), so the system is
        # rebuilt from the dict just read instead of reading the file a second time
        system = NSFFSystem(**system_arguments(ckpt["hyper_parameters"]))
        system.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CorruptFileError(
            path, f"not a checkpoint of this model ({_cause(err)})", made_by=MADE_BY
        ) from err
    return system.eval().to(device)


def save_checkpoint(
    checkpoint: dict[str, Any], path: str | os.PathLike, previous: str | os.PathLike | None = None
) -> None:
    """Write ``checkpoint`` to ``path`` atomically and verified.

    The state is checked for NaN/inf first; the file is written under a scratch name in the
    same folder, flushed to disk and read back with :func:`load_checkpoint` (same
    ``global_step``), then renamed to ``path``. ``previous``: where the file at ``path`` (if
    any) is moved just before, so that one older good checkpoint survives a later corruption.

    Raises:
        NonFiniteStateError: the state holds NaN or inf; nothing was written.
        OSError, RuntimeError, CorruptFileError: the write or its check failed; no scratch
            file is left, and ``path`` is as it was (or, when only the final rename failed,
            its content is at ``previous``).
    """
    path = Path(path)
    bad = nonfinite_tensors(checkpoint)
    if bad:
        raise NonFiniteStateError(path, bad, checkpoint.get("global_step"))
    tmp: Path | None = None
    try:
        with io.atomic_file(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            back = load_checkpoint(tmp)
            if back.get("global_step") != checkpoint.get("global_step"):
                raise CorruptFileError(tmp, "read back another global_step", MADE_BY)
            del back
            if previous is not None and path.is_file():
                os.replace(path, previous)
    except BaseException:
        if tmp is not None:  # also when the final rename failed (after the context's clean-up)
            tmp.unlink(missing_ok=True)
        raise


class VerifiedCheckpointIO(CheckpointIO):
    """Lightning's checkpoint writer and reader for training (``Trainer(plugins=[...])``).

    Saves with :func:`save_checkpoint` (``last.ckpt`` keeps its predecessor as
    ``previous.ckpt``); loads with :func:`load_checkpoint`, hence always ``weights_only=True``.
    A failed write becomes a :class:`~nsff_core.errors.StageError` of rule ``train`` naming the
    file; a non-finite state raises :class:`NonFiniteStateError` (training diverged).

    Args:
        scene: the scene name, for the error messages.
    """

    def __init__(self, scene: str | None = None) -> None:
        self.scene = scene

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        previous = path.with_name(PREVIOUS) if path.name == LAST else None
        try:
            save_checkpoint(checkpoint, path, previous)
        except NonFiniteStateError:
            raise
        except Exception as err:
            raise StageError(
                self.scene,
                "train",
                f"could not save the checkpoint {path}: {_cause(err)}",
                f"check that {path.parent} is writable and its disk has free space, then rerun"
                " (it resumes from the last checkpoint that was saved)",
            ) from err
        log.debug("saved and verified %s", path)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # weights_only is True whatever Lightning passes: these are our files, tensors only
        return load_checkpoint(path, map_location=map_location or "cpu")

    def remove_checkpoint(self, path: Any) -> None:
        Path(path).unlink(missing_ok=True)
