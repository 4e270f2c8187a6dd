"""Glue between Snakemake scripts and nsff_core: logging and user-facing errors.

Each ``workflow_scripts/<rule>.py`` runs its stage inside :func:`run_stage`, which sends log
records to the rule's log file and to the console, and turns a :class:`StageError` into a short
message (no traceback) and a non-zero exit, so Snakemake marks the job failed and removes its
outputs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from .errors import ConfigError, StageError


def setup_logging(log_path: str | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, if given, to ``log_path`` (overwritten)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )


@contextlib.contextmanager
def run_stage(smk: Any) -> Iterator[logging.Logger]:
    """Run a rule's body with logging set up; exit 1 with a clear message on bad input."""
    setup_logging(smk.log[0] if len(smk.log) else None)
    log = logging.getLogger(f"nsff.{smk.rule}")
    log.info("rule %s, scene %s", smk.rule, getattr(smk.wildcards, "scene", "-"))
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        log.info("CUDA_VISIBLE_DEVICES=%s", os.environ["CUDA_VISIBLE_DEVICES"])
    try:
        yield log
    except (StageError, ConfigError) as exc:
        log.error("%s", exc)
        sys.exit(1)
