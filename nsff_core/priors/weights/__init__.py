"""Pretrained checkpoints: one registry, a hash-checked cache, and a clear offline failure.

Three modules, each building on the one before:

- :mod:`~nsff_core.priors.weights.registry`: every checkpoint the workflow can use
  (:data:`REGISTRY`: file name, URL, hash), the ones a scene's backends need
  (:func:`needed_weights`) and the cache directory (:func:`cache_dir`);
- :mod:`~nsff_core.priors.weights.hashing`: the hash checks of local files and the digest record
  of their folder (:func:`open_verified` for the loaders, :func:`verify_file` for the rule
  ``weights``; trust on first use). No network code: the loaders of
  :mod:`nsff_core.priors.nets` import this module and the registry only;
- :mod:`~nsff_core.priors.weights.fetching`: the rule ``weights``'s fetching
  (:func:`fetch_for_scene`: downloads, torch hub's cache, the marker ``weights.json``) and
  :func:`resolve_from_marker`, through which the prior rules find their checkpoints.

The public names of the three modules can be imported from this package, as before it was
split (the rules and scripts do: ``from nsff_core.priors.weights import fetch_for_scene``). The
names of ``fetching`` are looked up there on first use (:func:`__getattr__`), so that importing
this package, or ``hashing`` through it, does not import ``urllib`` or ``http``. Code that
replaces one of these functions (a test's ``monkeypatch``) must do so in the module that defines
it: the others call it from there.

The fetching module is not named ``fetch`` (nor the hash checks ``verify``): a submodule
named like one of the package's functions would replace that function as the package's
attribute whenever something imported the module first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ...config import STAGES  # the stages' defaults, which needed_weights reads
from .hashing import (
    CHUNK,
    RECORD_FILE,
    HashMismatch,
    WeightsMismatch,
    digest_matches,
    log,
    open_verified,
    read_record,
    sha256_file,
    verify,
    verify_file,
)
from .hashing import _hash_open_file as _hash_open_file
from .registry import (
    BACKEND_WEIGHTS,
    ENV_VAR,
    FILE_ALIASES,
    REGISTRY,
    STAGE,
    WeightsEntry,
    cache_dir,
    entry,
    entry_for_file,
    needed_weights,
    weights_path,
)

if TYPE_CHECKING:
    from .fetching import (
        NETWORK_ERRORS,
        PROGRESS_EVERY_S,
        NotFetched,
        fetch,
        fetch_for_scene,
        resolve_from_marker,
    )

#: the names of :mod:`~nsff_core.priors.weights.fetching` this package passes on (``_urlopen``,
#: the network seam, for tests)
_FETCHING = frozenset(
    {
        "NETWORK_ERRORS",
        "PROGRESS_EVERY_S",
        "NotFetched",
        "fetch",
        "fetch_for_scene",
        "resolve_from_marker",
        "_urlopen",
    }
)

__all__ = [
    "BACKEND_WEIGHTS",
    "CHUNK",
    "ENV_VAR",
    "FILE_ALIASES",
    "NETWORK_ERRORS",
    "PROGRESS_EVERY_S",
    "RECORD_FILE",
    "REGISTRY",
    "STAGE",
    "STAGES",
    "HashMismatch",
    "NotFetched",
    "WeightsEntry",
    "WeightsMismatch",
    "cache_dir",
    "digest_matches",
    "entry",
    "entry_for_file",
    "fetch",
    "fetch_for_scene",
    "log",
    "needed_weights",
    "open_verified",
    "read_record",
    "resolve_from_marker",
    "sha256_file",
    "verify",
    "verify_file",
    "weights_path",
]


def __getattr__(name: str) -> Any:
    """A name of :mod:`~nsff_core.priors.weights.fetching`, imported when first asked for
    (PEP 562), and looked up there each time (never copied here)."""
    if name in _FETCHING:
        return getattr(importlib.import_module(f"{__name__}.fetching"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _FETCHING)
