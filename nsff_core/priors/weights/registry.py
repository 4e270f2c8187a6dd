"""The registry of pretrained checkpoints, and where the cache of them is.

Every checkpoint the workflow can use is an entry of :data:`REGISTRY` (file name, URL, hash);
:func:`needed_weights` names those a scene's backends need (from the backend registry,
:data:`BACKEND_WEIGHTS`), and :func:`cache_dir` is the folder they are fetched into
(:mod:`nsff_core.priors.weights.fetching`) and checked in
(:mod:`nsff_core.priors.weights.hashing`).

Hashes. An entry can carry a full ``sha256`` and/or a ``sha256_prefix``: the leading hex
digits of the file's sha256, which torchvision and torch hub embed in their file names
(``raft_large_C_T_V1-22a6c225.pth`` -> sha256 starts with ``22a6c225``; torch hub's
``check_hash`` checks exactly this prefix). The full digests of the public checkpoints were not
known when the registry was written (they cannot be downloaded here), so no entry carries one
yet. Such entries are trusted on first use (config ``weights.trust_on_first_use``, default
true; see :mod:`nsff_core.priors.weights.hashing`). With ``trust_on_first_use: false`` only
entries with a full ``sha256`` in the registry are used.

Loaders find the entry of a file by its name (:func:`entry_for_file`; the LPIPS files also by
the ``lpips`` package's names ``alexnet.pth`` and ``alex.pth``). A file with another name (a
checkpoint the caller chose) is not checked.

Cache directory: the configured value (config ``weights.cache_dir``), else ``$NSFF_WEIGHTS_DIR``,
else ``$XDG_CACHE_HOME/nsff/weights`` (``~/.cache/nsff/weights``).

No network code here, nor in :mod:`nsff_core.priors.weights.hashing`: the loaders of
:mod:`nsff_core.priors.nets` import these two modules only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import STAGES
from ..backends import weights_table

#: the rule whose name errors carry by default
STAGE = "weights"
ENV_VAR = "NSFF_WEIGHTS_DIR"


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
