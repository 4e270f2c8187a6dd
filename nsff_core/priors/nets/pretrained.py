"""What the pretrained prior backends share: RAFT flow, Mask R-CNN / detectron2 masks and DPT
depth (README.md, Pretrained prior backends).

:func:`~nsff_core.priors.flow.compute_flow`, :func:`~nsff_core.priors.masks.compute_masks` and
:func:`~nsff_core.priors.depth.compute_depth` hand a pretrained ``backend`` to their
``pretrained_*`` functions (each in its stage's module, so that a rule's environment only needs
its own backend's packages); which backends are pretrained, and their checkpoints, is said by the
backend registry :mod:`nsff_core.priors.backends`. These functions read the source frames at
source resolution (capped at 1280x720, as nsff_pl) through ``frames.json``, take the checkpoint
from the scene's ``weights.json`` marker (written by the rule ``weights``; nothing is downloaded
here, so GPU and cluster jobs never touch the network), and write the same files as the
weights-free backends, at training resolution.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import pickle
from pathlib import Path
from typing import Any, BinaryIO

from nsff_core.errors import StageError


def require(value: Any, what: str, stage: str, scene: str | None) -> None:
    if value is None:
        raise StageError(
            scene,
            stage,
            f"the pretrained backend needs {what}",
            "run it through the workflow (its rule passes frames.json and weights.json)",
        )


def training_hw(frames_json: str | Path) -> tuple[int, int]:
    w, h = json.loads(Path(frames_json).read_text())["size"]
    return int(h), int(w)


def fp16_autocast(device: Any, enabled: bool):
    """float16 autocast on ``device`` (a torch.device) when ``enabled``, else a no-op context.

    The CUDA inference paths of RAFT, DPT and Mask R-CNN share it.
    """
    if not enabled:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.float16)


def _brief(exc: BaseException, limit: int = 300) -> str:
    """One line of at most ``limit`` characters from an exception's message."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def torch_load_weights(path: str | Path, scene: str | None = None, stage: str = "weights") -> Any:
    """``torch.load`` of a pretrained file: hash-checked first, then tensors and containers only.

    The file is checked against the registry's or the recorded sha256
    (:func:`~nsff_core.priors.weights.hashing.open_verified`; a file whose name is no registry
    file is not checked) and loaded from the same open file, on the CPU, with ``weights_only=True``
    passed explicitly: torch's unpickler then refuses any other Python object, and the
    environment variable ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn that off (torch
    honours it only where a caller leaves ``weights_only`` unset).

    Raises:
        WeightsMismatch, StageError: the hash check failed (see ``open_verified``).
        Whatever ``torch.load`` raises for an unreadable file or a foreign object
        (``pickle.UnpicklingError``, ``RuntimeError``, ...): the caller names the file.
    """
    import torch

    from nsff_core.priors.weights.hashing import open_verified

    with open_verified(path, scene, stage) as f:
        return torch.load(f, map_location="cpu", weights_only=True)


#: The only globals a pickled file of numpy arrays needs (module, name): the array and dtype
#: constructors, under numpy 1's (``numpy.core``) and numpy 2's (``numpy._core``) module names,
#: OrderedDict, and ``_codecs.encode``, through which protocol-2 pickles of Python 3 store bytes.
_ARRAY_PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as array pickles use it (latin-1 only: no other codec runs)."""
    if encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r} is not allowed")
    return text.encode("latin1")


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, numbers, strings and containers, nothing else.

    Every other global (a function or class a pickle could call) is refused before it is
    looked up, so no code of the file's choosing runs (the "restricting globals" recipe of
    the :mod:`pickle` documentation).
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ARRAY_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"the file wants the Python object {module}.{name}; only numpy arrays, "
                "numbers, strings and containers are allowed"
            )
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        import numpy as np

        if module == "numpy":
            return getattr(np, name)
        if name == "OrderedDict":
            import collections

            return collections.OrderedDict
        # numpy 2 keeps numpy.core as a deprecated alias of numpy._core; numpy 1 has only core
        sub = module.rsplit(".", 1)[1]
        try:
            mod = importlib.import_module(f"numpy._core.{sub}")
        except ImportError:
            mod = importlib.import_module(f"numpy.core.{sub}")
        return getattr(mod, name)


def load_pickled_arrays(f: BinaryIO) -> Any:
    """Unpickle a file of numpy arrays (e.g. a detectron2 model-zoo ``.pkl``) without running
    code: only the globals in :data:`_ARRAY_PICKLE_GLOBALS` are resolved.

    Strings that Python 2 pickled as bytes are read as latin-1 (as detectron2 itself does).

    Raises:
        pickle.UnpicklingError: the file needs another global (the message names it) or is
            not a pickle; ``EOFError`` for a truncated file.
    """
    return _ArrayUnpickler(f, encoding="latin1").load()


def load_state_dict_file(
    model: Any,
    checkpoint: str | Path,
    what: str,
    missing_hint: str,
    wrong_hint: str,
    stage: str,
    scene: str | None = None,
) -> None:
    """Load a torch state-dict file into ``model`` strictly, through :func:`torch_load_weights`
    (hash check, ``weights_only=True``); a missing file, an unreadable one or one with other
    keys or shapes is a :class:`StageError` naming ``what`` and the path, and a file that fails
    its hash check is a :class:`~nsff_core.priors.weights.hashing.WeightsMismatch`."""
    path = Path(checkpoint)
    if not path.is_file():
        raise StageError(scene, stage, f"{what} checkpoint not found: {path}", missing_hint)
    state = _load_or_stage_error(path, what, wrong_hint, stage, scene)
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # other keys or shapes
        raise StageError(
            scene, stage, f"{path} is not a {what} state dict ({_brief(exc)})", wrong_hint
        ) from exc


def _load_or_stage_error(
    path: Path, what: str, wrong_hint: str, stage: str, scene: str | None
) -> Any:
    """:func:`torch_load_weights`, with a file torch cannot read as a :class:`StageError`."""
    try:
        return torch_load_weights(path, scene, stage)
    except StageError:
        raise
    except Exception as exc:  # unreadable file, foreign pickle
        raise StageError(
            scene, stage, f"{path} is not a {what} state dict ({_brief(exc)})", wrong_hint
        ) from exc
