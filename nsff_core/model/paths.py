"""Camera/time paths for the render splits and the camera-path files ``path_{name}`` reads.

Frames
------
Every pose here is a ``c2w`` (4, 4) in the **SfM world with OpenCV camera axes** (x right,
y down, z forward), the frame of ``cameras.npz`` and of camera-path files. The renderer maps
them to the NSFF world / OpenGL axes with :meth:`nsff_core.model.rays.SceneNormalization.apply_c2w`.
nsff_pl builds its paths in its normalised world (OpenGL axes, average camera at the origin);
the conversions used to express its formulas here are documented on each builder.

Splits
------
One parser, :func:`parse_split`, turns a split name into a typed :class:`SplitSpec`;
:func:`split_name` is its inverse. The forms are:

- ``test``: the training poses, times 0..N-1.
- ``test_spiral``: 6N poses over the whole trajectory plus a small circle (4 turns).
- ``test_spiral{X}``: time fixed to X, 60 poses wandering around training pose X.
- ``test_spiral_time``: the poses of ``test_spiral`` with the time moving on with the camera,
  evenly from 0 to N-1 (most frames at fractional times, so interpolated).
- ``test_fixview{X}_interp{Y}``: pose of view X, times k/Y from 0 to N-1 ((N-1)Y+1 frames;
  Y = 0 gives the N integer times).
- ``bullet{T}``: bullet time: the time frozen at T (an integer or a decimal such as 7.5;
  fractional times are interpolated) while the camera sweeps along the training cameras'
  path from the first to the last camera and back (:data:`BULLET_POSES` poses, eased at the
  turning points).
- ``path_{name}``: the camera-path file ``{paths_dir}/{name}.npz``.

Times are in frame units; fractional times are rendered by time interpolation
(:mod:`nsff_core.model.interp`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nsff_core.config import MAX_FRAME_SIDE

from .cameras import camera_centres, interpolate_poses, path_length, rigid_matrix

#: most frames per time step of a split test_fixview{X}_interp{Y}: (N - 1) x Y + 1 poses are
#: made and rendered, so a typo such as interp999999 would allocate and render for days
MAX_INTERP = 1000

#: Tolerance on ``R^T R = I`` and ``det R = 1`` when validating poses.
ROTATION_TOL = 1e-4
#: Poses per training frame on ``test_spiral`` (nsff_pl).
SPIRAL_POSES_PER_FRAME = 6
#: Turns of the circle on ``test_spiral`` (theta from 0 to 8 pi, nsff_pl).
SPIRAL_TURNS = 4
#: Percentile of the per-frame steps along the average camera's x axis used as circle radius.
SPIRAL_RADIUS_PERCENTILE = 10.0
#: Lower bound on the circle radius, as a fraction of the trajectory's path length.
SPIRAL_MIN_RADIUS_FRAC = 1e-3
#: Poses of ``test_spiral{X}`` (nsff_pl / orig).
WANDER_POSES = 60

#: Poses of ``bullet{T}`` (there and back along the training cameras' path).
BULLET_POSES = 60

SPLIT_KINDS = ("test", "spiral", "spiral_time", "spiral_at", "fixview_interp", "bullet", "path")

VALID_FORMS = (
    "test",
    "test_spiral",
    "test_spiral_time",
    "test_spiral{X}",
    "test_fixview{X}_interp{Y}",
    "bullet{T}",
    "path_{name}",
)

# --------------------------------------------------------------------------- camera-path files


def _fail(where: str, key: str, msg: str) -> ValueError:
    return ValueError(f"{where}: key '{key}': {msg}")


def _check_arrays(
    c2w: np.ndarray,
    K: np.ndarray,
    hw: np.ndarray,
    times: np.ndarray,
    where: str,
    n_frames: int | None = None,
) -> None:
    """Validate camera-path arrays; raise ValueError naming ``where`` and the key."""
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or c2w.shape[0] < 1:
        raise _fail(where, "c2w", f"expected shape (M, 4, 4) with M >= 1, got {c2w.shape}")
    if not np.all(np.isfinite(c2w)):
        raise _fail(where, "c2w", "contains non-finite values")
    if not np.allclose(c2w[:, 3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise _fail(where, "c2w", "last row of every matrix must be [0, 0, 0, 1]")
    R = c2w[:, :3, :3]
    ortho = np.abs(np.swapaxes(R, 1, 2) @ R - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(R)
    bad = np.flatnonzero((ortho > ROTATION_TOL) | (np.abs(det - 1.0) > ROTATION_TOL))
    if bad.size:
        i = int(bad[0])
        raise _fail(
            where,
            "c2w",
            f"rotation of pose {i} is not orthonormal with det +1 "
            f"(max |R^T R - I| = {ortho[i]:.3g}, det = {det[i]:.6g}); {bad.size} bad pose(s)",
        )
    if K.shape != (3, 3):
        raise _fail(where, "K", f"expected shape (3, 3), got {K.shape}")
    if not np.all(np.isfinite(K)):
        raise _fail(where, "K", "contains non-finite values")
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise _fail(where, "K", "expected positive fx, fy and last row [0, 0, 1]")
    if hw.shape != (2,):
        raise _fail(where, "hw", f"expected shape (2,), got {hw.shape}")
    if not np.all(np.isfinite(hw)) or np.any(hw < 1) or np.any(hw != np.round(hw)):
        raise _fail(where, "hw", f"expected two positive integers (H, W), got {hw.tolist()}")
    if np.any(hw > MAX_FRAME_SIDE):
        # checked before anything of that size is allocated: a typo here asks for many GB
        raise _fail(
            where,
            "hw",
            f"render size {int(hw[0])}x{int(hw[1])} (H x W) exceeds the largest allowed side "
            f"of {MAX_FRAME_SIDE} px",
        )
    if times.shape != (c2w.shape[0],):
        raise _fail(
            where, "times", f"expected shape ({c2w.shape[0]},) to match c2w, got {times.shape}"
        )
    if not np.all(np.isfinite(times)):
        raise _fail(where, "times", "contains non-finite values")
    if n_frames is not None:
        lo, hi = float(times.min()), float(times.max())
        if lo < 0 or hi > n_frames - 1:
            raise _fail(
                where,
                "times",
                f"times span [{lo:g}, {hi:g}] but must lie in [0, {n_frames - 1}] "
                f"(the scene has {n_frames} frames)",
            )


@dataclass(frozen=True, eq=False)
class CameraPath:
    """Cameras and times to render.

    Attributes:
        c2w: (M, 4, 4) float64 camera-to-world, SfM world, OpenCV axes (as ``cameras.npz``).
        K: (3, 3) float64 intrinsics at the render resolution (OpenCV pixel convention).
        hw: (H, W) render resolution.
        times: (M,) float64 frame times; fractional times are interpolated.
        name: the split name (or the file stem for a loaded path).
    """

    c2w: np.ndarray
    K: np.ndarray
    hw: tuple[int, int]
    times: np.ndarray
    name: str

    def __post_init__(self) -> None:
        c2w = np.array(self.c2w, dtype=np.float64)
        K = np.array(self.K, dtype=np.float64)
        hw = np.array(self.hw, dtype=np.float64).reshape(-1)
        times = np.array(self.times, dtype=np.float64).reshape(-1)
        _check_arrays(c2w, K, hw, times, f"CameraPath '{self.name}'")
        object.__setattr__(self, "c2w", c2w)
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "hw", (int(hw[0]), int(hw[1])))
        object.__setattr__(self, "times", times)

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    def check_times(self, n_frames: int) -> None:
        """Raise ValueError unless all times lie in [0, n_frames - 1]."""
        _check_arrays(
            self.c2w,
            self.K,
            np.asarray(self.hw, np.float64),
            self.times,
            f"CameraPath '{self.name}'",
            n_frames,
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the camera-path .npz (keys ``c2w``, ``K``, ``hw``, ``times``) to exactly ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez(
                f,
                c2w=self.c2w,
                K=self.K,
                hw=np.asarray(self.hw, dtype=np.int64),
                times=self.times,
            )

    @classmethod
    def load(
        cls, path: str | os.PathLike, n_frames: int | None = None, name: str | None = None
    ) -> CameraPath:
        """Read and validate a camera-path .npz.

        Args:
            path: the file.
            n_frames: the scene's frame count N; when given, times must lie in [0, N - 1].
            name: the path's name (default: the file stem).

        Raises:
            FileNotFoundError: no such file.
            ValueError: a key is missing or has a bad shape or value (message names file and key).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"camera-path file not found: {path}")
        where = f"camera-path file {path}"
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as e:  # zip / format errors
            raise ValueError(f"{where}: cannot read as .npz ({e})") from e
        arrays = {}
        for key in ("c2w", "K", "hw", "times"):
            if key not in data:
                raise _fail(where, key, f"missing (file has {sorted(data)})")
            try:
                arrays[key] = np.asarray(data[key], dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise _fail(where, key, f"not numeric ({e})") from e
        _check_arrays(arrays["c2w"], arrays["K"], arrays["hw"], arrays["times"], where, n_frames)
        return cls(
            c2w=arrays["c2w"],
            K=arrays["K"],
            hw=(int(arrays["hw"][0]), int(arrays["hw"][1])),
            times=arrays["times"],
            name=path.stem if name is None else name,
        )


# --------------------------------------------------------------------------- split names


@dataclass(frozen=True)
class SplitSpec:
    """A parsed render split.

    Attributes:
        kind: one of :data:`SPLIT_KINDS`.
        view: training view X (``spiral_at``, ``fixview_interp``), else None.
        interp: frames per integer time step Y (``fixview_interp``), else None.
        path_name: camera-path file stem (``path``), else None.
        time: the frozen time T in frame units (``bullet``), else None; ``time_text`` is T as
            written in the name (so that the name round-trips exactly).
    """

    kind: str
    view: int | None = None
    interp: int | None = None
    path_name: str | None = None
    time_text: str | None = None

    @property
    def time(self) -> float | None:
        return None if self.time_text is None else float(self.time_text)

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise ValueError(f"unknown split kind {self.kind!r}; expected one of {SPLIT_KINDS}")
        need_view = self.kind in ("spiral_at", "fixview_interp")
        if need_view != (self.view is not None):
            raise ValueError(
                f"split kind {self.kind!r}: view must {'' if need_view else 'not '}be set"
            )
        if self.view is not None and self.view < 0:
            raise ValueError(f"view must be >= 0, got {self.view}")
        need_interp = self.kind == "fixview_interp"
        if need_interp != (self.interp is not None):
            raise ValueError(
                f"split kind {self.kind!r}: interp must {'' if need_interp else 'not '}be set"
            )
        if self.interp is not None and not 0 <= self.interp <= MAX_INTERP:
            raise ValueError(
                f"interp must be 0 to {MAX_INTERP} frames per time step, got {self.interp}"
            )
        need_name = self.kind == "path"
        if need_name != (self.path_name is not None):
            raise ValueError(
                f"split kind {self.kind!r}: path_name must {'' if need_name else 'not '}be set"
            )
        need_time = self.kind == "bullet"
        if need_time != (self.time_text is not None):
            raise ValueError(
                f"split kind {self.kind!r}: time must {'' if need_time else 'not '}be set"
            )
        if self.time_text is not None and not _TIME.fullmatch(self.time_text):
            raise ValueError(
                f"bad bullet time {self.time_text!r}: a non-negative number such as 7 or 7.5 "
                "(no leading zeros, no trailing zeros after the point)"
            )
        if self.path_name is not None and not _PATH_NAME.fullmatch(self.path_name):
            raise ValueError(
                f"bad camera-path name {self.path_name!r}: use letters, digits, '_' and '-'"
            )


_PATH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_INT = r"(?:0|[1-9][0-9]*)"  # no leading zeros, so split_name(parse_split(s)) == s
_TIME = re.compile(rf"{_INT}(?:\.[0-9]*[1-9])?")
# the grammar of split names, its parts named for parse_split
_SPLIT_GRAMMAR = (
    r"(?P<test>test)"
    r"|(?P<spiral>test_spiral)"
    r"|(?P<spiral_time>test_spiral_time)"
    rf"|test_spiral(?P<spiral_at>{_INT})"
    rf"|test_fixview(?P<fix_view>{_INT})_interp(?P<fix_interp>{_INT})"
    rf"|bullet(?P<bullet>{_TIME.pattern})"
    rf"|path_(?P<path>{_PATH_NAME.pattern})"
)
_SPLIT_RE = re.compile(_SPLIT_GRAMMAR)
#: The split grammar as a regular expression without named groups: exactly the names
#: :func:`parse_split` accepts (with ``re.fullmatch``). The rules use it as the wildcard
#: constraint of ``{split}`` and the config validator as the pattern of ``render.splits``, so
#: a malformed name (``test_spiral01``) matches no rule instead of failing inside a job.
SPLIT_PATTERN = re.sub(r"\(\?P<\w+>", "(?:", _SPLIT_GRAMMAR)


def parse_split(name: str) -> SplitSpec:
    """Parse a split name (the only parser of split names in the project).

    Raises:
        ValueError: the name matches none of :data:`VALID_FORMS` (the message lists them).
    """
    m = _SPLIT_RE.fullmatch(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(
            f"unknown render split {name!r}; valid forms: {', '.join(VALID_FORMS)} "
            "(X, Y non-negative integers without leading zeros; T such a number with an "
            "optional decimal part, e.g. 7.5; name of letters, digits, '_' and '-')"
        )
    if m["test"]:
        return SplitSpec("test")
    if m["spiral"]:
        return SplitSpec("spiral")
    if m["spiral_time"]:
        return SplitSpec("spiral_time")
    if m["bullet"] is not None:
        return SplitSpec("bullet", time_text=m["bullet"])
    if m["spiral_at"] is not None:
        return SplitSpec("spiral_at", view=int(m["spiral_at"]))
    if m["fix_view"] is not None:
        return SplitSpec("fixview_interp", view=int(m["fix_view"]), interp=int(m["fix_interp"]))
    return SplitSpec("path", path_name=m["path"])


def split_name(spec: SplitSpec) -> str:
    """Inverse of :func:`parse_split`."""
    if spec.kind == "test":
        return "test"
    if spec.kind == "spiral":
        return "test_spiral"
    if spec.kind == "spiral_time":
        return "test_spiral_time"
    if spec.kind == "bullet":
        return f"bullet{spec.time_text}"
    if spec.kind == "spiral_at":
        return f"test_spiral{spec.view}"
    if spec.kind == "fixview_interp":
        return f"test_fixview{spec.view}_interp{spec.interp}"
    return f"path_{spec.path_name}"


# --------------------------------------------------------------------------- path builders


def _check_view(view: int, n: int, name: str) -> None:
    if not 0 <= view <= n - 1:
        raise ValueError(
            f"split {name!r}: view {view} is out of range; the scene has {n} frames "
            f"(valid views 0..{n - 1})"
        )


def spiral_radius(c2w: np.ndarray) -> float:
    """Circle radius of ``test_spiral`` in SfM units.

    nsff_pl: P10 of |dx| between consecutive camera x-translations in its normalised world,
    whose x axis is the average camera's x axis. Here: the same statistic along the average
    camera's x axis of the SfM world, raised to at least ``SPIRAL_MIN_RADIUS_FRAC`` x the path
    length (P10 is often ~0 for jittery or partly static trajectories).
    """
    centres = camera_centres(c2w)
    if len(centres) < 2:
        return 0.0
    from nsff_core.model.rays import average_pose  # rays imports torch: not at parse time

    x_axis = average_pose(c2w)[:3, 0]
    steps = np.abs(np.diff(centres @ x_axis))
    r = float(np.percentile(steps, SPIRAL_RADIUS_PERCENTILE))
    return max(r, SPIRAL_MIN_RADIUS_FRAC * path_length(centres))


def spiral_path(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``test_spiral``: (6N, 4, 4) poses and (6N,) times.

    - Poses: training poses sampled at 6N evenly spaced trajectory parameters in [0, N - 1],
      centres lerped and rotations slerped (:func:`nsff_core.model.cameras.interpolate_poses`); no
      look-at, the camera keeps the interpolated orientation (as nsff_pl).
    - Circle: radius :func:`spiral_radius`, theta from 0 to 8 pi (4 turns), added to the centres
      as ``r (cos theta x_avg + sin theta up_avg)`` with x_avg and up_avg = -y_avg the average
      camera's right and up axes. nsff_pl adds it in world x/y of its normalised world, which is
      the average camera's (OpenGL) x/y plane; our SfM world has arbitrary axes, so world x/y
      could even contain the viewing direction. Using the average camera's axes reproduces
      nsff_pl's circle exactly (up to the normalisation scale).
    - Times: ``floor(idx / 6)``, integer steps as nsff_pl (0 .. N - 1, non-decreasing), so no
      time interpolation is needed for this split.
    """
    n = len(c2w)
    m = SPIRAL_POSES_PER_FRAME * n
    query = np.linspace(0.0, n - 1, m)
    poses = interpolate_poses(np.arange(n, dtype=np.float64), c2w, query)
    from .rays import average_pose

    avg = average_pose(c2w)
    x_avg, up_avg = avg[:3, 0], -avg[:3, 1]
    theta = np.linspace(0.0, 2 * math.pi * SPIRAL_TURNS, m)
    r = spiral_radius(c2w)
    poses[:, :3, 3] += r * (np.cos(theta)[:, None] * x_avg + np.sin(theta)[:, None] * up_avg)
    times = np.floor(np.arange(m) / SPIRAL_POSES_PER_FRAME)
    return poses, times


def bullet_path(c2w: np.ndarray, time: float) -> tuple[np.ndarray, np.ndarray]:
    """``bullet{T}``: (BULLET_POSES, 4, 4) poses and times all equal to T.

    The camera runs along the training trajectory (centres lerped, rotations slerped, as
    ``test_spiral``) from the first camera to the last and back, with a cosine ease so that it
    slows down at both ends: trajectory parameter ``(N - 1)(1 - cos 2 pi s) / 2`` for s in
    [0, 1). It sweeps the span the training cameras cover, where the scene was seen.
    """
    n = len(c2w)
    s = np.arange(BULLET_POSES, dtype=np.float64) / BULLET_POSES
    query = (n - 1) * (1.0 - np.cos(2.0 * math.pi * s)) / 2.0
    poses = interpolate_poses(np.arange(n, dtype=np.float64), c2w, query)
    return poses, np.full(BULLET_POSES, float(time))


def wander_offsets(c2w: np.ndarray) -> np.ndarray:
    """``test_spiral{X}`` centre offsets (60, 3) in **OpenCV camera-local** axes.

    nsff_pl/orig: m = |x_0 - x_{N-1}| / 5 (here the distance between the first and last camera
    centres), phi_k = 2 pi k / 60, offset o = (m sin phi, m cos phi / 2, m cos phi) in OpenGL
    camera-local axes applied as ``c2w_X @ inverse(translate(o))``, i.e. the centre moves by
    ``R_gl (-o)`` and the rotation is unchanged. With ``R_gl = R_cv diag(1, -1, -1)`` this is
    ``R_cv (-o_x, o_y, o_z)``: the OpenCV-local offset returned here. A static camera
    (m = 0) gives 60 copies of pose X.
    """
    centres = camera_centres(c2w)
    m = float(np.linalg.norm(centres[0] - centres[-1])) / 5.0
    phi = 2 * math.pi * np.arange(WANDER_POSES) / WANDER_POSES
    return np.stack([-m * np.sin(phi), m * np.cos(phi) / 2, m * np.cos(phi)], axis=-1)


def wander_path(c2w: np.ndarray, view: int) -> tuple[np.ndarray, np.ndarray]:
    """``test_spiral{X}``: (60, 4, 4) poses around training pose X and times all equal to X."""
    base = np.asarray(c2w, np.float64)[view]
    local = wander_offsets(c2w)
    centres = base[:3, 3] + local @ base[:3, :3].T
    poses = rigid_matrix(np.broadcast_to(base[:3, :3], (len(local), 3, 3)), centres)
    return poses, np.full(len(local), float(view))


def fixview_times(n: int, interp: int) -> np.ndarray:
    """``test_fixview{X}_interp{Y}`` times: k / Y for k = 0 .. (N - 1) Y ((N-1)Y + 1 frames);
    Y = 0 gives the N integer times."""
    if interp == 0:
        return np.arange(n, dtype=np.float64)
    return np.arange((n - 1) * interp + 1, dtype=np.float64) / interp


def make_path(
    spec: SplitSpec,
    c2w: np.ndarray,
    K: np.ndarray,
    hw: tuple[int, int],
    paths_dir: str | os.PathLike | None = None,
) -> CameraPath:
    """Build the cameras and times of a render split (the forms in the module docstring).

    Args:
        spec: the split (:func:`parse_split`).
        c2w: (N, 4, 4) training poses, SfM world, OpenCV axes (``cameras.npz``).
        K: (3, 3) training intrinsics; ``hw``: training (H, W). Used for all generated splits.
        paths_dir: folder of camera-path files, needed for ``path_{name}`` only.

    Returns:
        a :class:`CameraPath` named ``split_name(spec)``, poses in the frame of ``c2w``.

    Raises:
        ValueError: bad training poses, a view outside [0, N - 1], a missing ``paths_dir``, or
            an invalid camera-path file.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    n = len(c2w)
    name = split_name(spec)
    _check_arrays(
        c2w,
        np.asarray(K, np.float64),
        np.asarray(hw, np.float64).reshape(-1),
        np.zeros(n),
        "training cameras",
    )
    if spec.view is not None:
        _check_view(spec.view, n, name)
    if spec.kind == "test":
        poses, times = c2w.copy(), np.arange(n, dtype=np.float64)
    elif spec.kind == "spiral":
        poses, times = spiral_path(c2w)
    elif spec.kind == "spiral_time":
        poses, _ = spiral_path(c2w)
        times = np.linspace(0.0, n - 1, len(poses))
    elif spec.kind == "bullet":
        if spec.time > n - 1:
            raise ValueError(
                f"split {name!r}: time {spec.time_text} is after the last frame; the scene has "
                f"{n} frames (times 0 to {n - 1})"
            )
        poses, times = bullet_path(c2w, spec.time)
    elif spec.kind == "spiral_at":
        poses, times = wander_path(c2w, spec.view)
    elif spec.kind == "fixview_interp":
        times = fixview_times(n, spec.interp)
        poses = np.repeat(c2w[spec.view][None], len(times), axis=0)
    else:
        if paths_dir is None:
            raise ValueError(f"split {name!r} needs a camera-path folder (paths_dir)")
        return CameraPath.load(Path(paths_dir) / f"{spec.path_name}.npz", n_frames=n, name=name)
    return CameraPath(c2w=poses, K=K, hw=hw, times=times, name=name)
