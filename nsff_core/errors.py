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
