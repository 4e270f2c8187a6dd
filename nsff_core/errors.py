"""Errors that reach the user.

Every failure caused by the user's input is raised as :class:`StageError`, which names the
scene, the workflow rule (stage) and the cause, and says what to do about it. Snakemake prints
the message into the rule's log and on the console.
"""

from __future__ import annotations


class StageError(RuntimeError):
    """A stage cannot run on this scene's input.

    Args:
        scene: scene name from the sheet (``None`` outside the workflow).
        stage: the workflow rule, e.g. ``"frames"`` or ``"sfm"``.
        cause: what is wrong, with the offending path or value.
        hint: what the user can do about it.
    """

    def __init__(self, scene: str | None, stage: str, cause: str, hint: str = "") -> None:
        self.scene = scene
        self.stage = stage
        self.cause = cause
        self.hint = hint
        where = f"scene '{scene}', rule '{stage}'" if scene else f"rule '{stage}'"
        msg = f"[{where}] {cause}"
        if hint:
            msg += f"\n  What to do: {hint}"
        super().__init__(msg)


class ConfigError(ValueError):
    """The configuration or the scene sheet is invalid (raised before any job runs)."""


class CorruptFileError(ValueError):
    """A file that a stage reads does not decode: truncated, corrupt or of another format.

    Raised by the readers of :mod:`nsff_core.model.io` (and the checkpoint loader), which know the
    file but not the scene or the rule that reads it; :func:`nsff_core.workflow.stage.run_stage`
    turns it into a :class:`StageError` naming both (see :meth:`to_stage_error`).

    Args:
        path: the file.
        cause: what is wrong with it.
        made_by: the workflow rule that writes this file (``"sfm"`` for ``cameras.npz``), or
            ``None`` for a file the user gave us.
        output: the rule output to delete so that the rule runs again: the file itself
            (default), or the folder of a per-frame file (Snakemake tracks ``flow_fw/``, not
            the files in it, so deleting one file would not rerun the rule).
    """

    def __init__(
        self, path: object, cause: str, made_by: str | None = None, output: object = None
    ) -> None:
        self.path = str(path)
        self.cause = cause
        self.made_by = made_by
        self.output = str(output) if output is not None else self.path
        super().__init__(f"cannot read {self.path}: {cause}")

    def to_stage_error(self, scene: str | None, stage: str) -> StageError:
        """The error as the rule ``stage`` of ``scene`` reports it."""
        if self.made_by:
            what = "the folder " if self.output != self.path else ""
            hint = (
                f"delete {what}{self.output} and rerun: rule '{self.made_by}' writes it again"
                " (Snakemake reruns what depends on it)"
            )
        else:
            hint = "replace or remove the file"
        return StageError(scene, stage, str(self), hint)
