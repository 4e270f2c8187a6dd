"""Glue between Snakemake scripts and nsff_core: logging, GPU slots and user-facing errors.

Each ``workflow_scripts/<rule>.py`` does all of its work, imports of the library included, inside
:func:`run_stage`, which

1. sends log records to the rule's log file and to the console;
2. claims the job's GPU slots (:mod:`nsff_core.workflow.gpu_slots`; a job that declares no ``gpu``
   resource claims none) before the rule's body runs, i.e. before anything imports torch;
3. ends every job's log with one of two lines that :mod:`nsff_core.workflow.report` reads back:
   ``FINISHED`` on success, ``FAILED`` on any exception (an interrupt and a non-zero
   ``sys.exit`` included). Nothing is written to the log file after that line.

A :class:`StageError` (bad input; a :class:`CorruptFileError` becomes one, a
:class:`ConfigError` is reported the same way) is a short message on the console, its
traceback goes to the log file only; any other exception is logged with its full traceback.
Either way the job exits non-zero, so Snakemake marks it failed and removes its outputs. A job
killed by a signal (SIGKILL, out of memory) writes neither line.

This module and :mod:`nsff_core.workflow.gpu_slots` import neither torch nor numpy: a script imports
them before its GPU claim.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

from nsff_core.errors import ConfigError, CorruptFileError, StageError

#: the last line of a job's log that succeeded / failed (read by :mod:`nsff_core.workflow.report`)
FINISHED = "FINISHED"
FAILED = "FAILED"
#: an end line as :func:`run_stage` writes it (after the time, level and logger name)
END_LINE = re.compile(rf" nsff\.\S+: (?P<outcome>{FINISHED}|{FAILED}): rule \S+, scene ")
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
    # no log file: a NullHandler, or Python's last-resort handler would print it on stderr
    file_only.handlers = [h for h in handlers if isinstance(h, logging.FileHandler)] or [
        logging.NullHandler()
    ]
    file_only.propagate = False


def _close_log_files() -> None:
    """Detach and close the log-file handlers, so that the end line stays the last line (a
    library that logs at interpreter exit then reaches the console only)."""
    for logger in (logging.getLogger(), logging.getLogger(_FILE_ONLY)):
        for h in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(h)
            h.close()


def _end(log: logging.Logger, outcome: str, rule: str, scene: str | None, note: str = "") -> None:
    """Write the job's end line (matched by :data:`END_LINE`) and close the log file."""
    level = logging.INFO if outcome == FINISHED else logging.ERROR
    log.log(level, "%s: rule %s, scene %s%s", outcome, rule, scene or "-", note)
    _close_log_files()


@contextlib.contextmanager
def run_stage(smk: Any) -> Iterator[logging.Logger]:
    """Run a rule's body with logging set up and the job's GPU slots claimed.

    Args:
        smk: the ``snakemake`` object of the script (``log``, ``rule``, ``wildcards`` and
            ``resources`` are used; ``resources.gpu`` is the number of GPU slots to claim).
    Yields:
        the rule's logger.
    Raises:
        SystemExit: 1 after any exception of the body (logged, with the ``FAILED`` line).
    """
    setup_logging(smk.log[0] if len(smk.log) else None)
    log = logging.getLogger(f"nsff.{smk.rule}")
    scene = getattr(smk.wildcards, "scene", None)
    log.info("rule %s, scene %s", smk.rule, scene or "-")
    try:
        from .gpu_slots import claim_for_job

        resources = getattr(smk, "resources", None)
        try:
            # the claim lives on file descriptors held until the process exits (see gpu_slots)
            claim_for_job(resources.get("gpu", 0) if resources is not None else 0)
        except ValueError as exc:  # more GPUs asked for than configured: says what to do
            raise StageError(scene, smk.rule, f"GPU slots: {exc}") from None
        if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            log.info("CUDA_VISIBLE_DEVICES=%s", os.environ["CUDA_VISIBLE_DEVICES"])
        yield log
    except (StageError, ConfigError, CorruptFileError) as exc:
        if isinstance(exc, CorruptFileError):
            exc = exc.to_stage_error(scene, smk.rule)
        log.error("%s", exc)
        logging.getLogger(_FILE_ONLY).error("traceback (for a bug report):", exc_info=True)
        _end(log, FAILED, smk.rule, scene)
        sys.exit(1)
    except KeyboardInterrupt:
        _end(log, FAILED, smk.rule, scene, ": interrupted")
        raise
    except SystemExit as exc:
        if exc.code in (None, 0):  # a library that ends the process on success
            _end(log, FINISHED, smk.rule, scene)
        else:
            _end(log, FAILED, smk.rule, scene, f": exit code {exc.code}")
        raise
    except Exception:
        log.exception("unexpected error in rule %s, scene %s", smk.rule, scene or "-")
        _end(log, FAILED, smk.rule, scene)
        sys.exit(1)
    _end(log, FINISHED, smk.rule, scene)
