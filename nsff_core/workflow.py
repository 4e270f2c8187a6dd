"""Glue between Snakemake scripts and nsff_core: logging and user-facing errors.

Each ``workflow_scripts/<rule>.py`` runs its stage inside :func:`run_stage`, which sends log
records to the rule's log file and to the console, and ends every job with one of two lines that
:mod:`nsff_core.report` reads back: ``FINISHED`` on success, ``FAILED`` on any exception. A
:class:`StageError` (bad input; a :class:`CorruptFileError` becomes one) is reported as a short
message on the console, its traceback goes to the log file only; any other exception is logged
with its full traceback. Either way the job exits non-zero, so Snakemake marks it failed and
removes its outputs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from .errors import ConfigError, CorruptFileError, StageError

#: the last line of a job's log that succeeded / failed (read by :mod:`nsff_core.report`)
FINISHED = "FINISHED"
FAILED = "FAILED"
#: logger whose records reach the rule's log file only (tracebacks of user-facing errors)
_FILE_ONLY = "nsff.logfile"


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
    file_only = logging.getLogger(_FILE_ONLY)
    file_only.handlers = [h for h in handlers if isinstance(h, logging.FileHandler)]
    file_only.propagate = False


@contextlib.contextmanager
def run_stage(smk: Any) -> Iterator[logging.Logger]:
    """Run a rule's body with logging set up; exit 1 with a clear message on bad input."""
    setup_logging(smk.log[0] if len(smk.log) else None)
    log = logging.getLogger(f"nsff.{smk.rule}")
    log.info("rule %s, scene %s", smk.rule, getattr(smk.wildcards, "scene", "-"))
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        log.info("CUDA_VISIBLE_DEVICES=%s", os.environ["CUDA_VISIBLE_DEVICES"])
    scene = getattr(smk.wildcards, "scene", None)
    try:
        yield log
    except (StageError, ConfigError, CorruptFileError) as exc:
        if isinstance(exc, CorruptFileError):
            exc = exc.to_stage_error(scene, smk.rule)
        log.error("%s", exc)
        logging.getLogger(_FILE_ONLY).error("traceback (for a bug report):", exc_info=True)
        log.error("%s: rule %s, scene %s", FAILED, smk.rule, scene or "-")
        sys.exit(1)
    except KeyboardInterrupt:
        log.error("%s: rule %s, scene %s: interrupted", FAILED, smk.rule, scene or "-")
        raise
    except Exception:
        log.exception("unexpected error in rule %s, scene %s", smk.rule, scene or "-")
        log.error("%s: rule %s, scene %s", FAILED, smk.rule, scene or "-")
        sys.exit(1)
    log.info("%s: rule %s, scene %s", FINISHED, smk.rule, scene or "-")
