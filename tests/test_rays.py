"""Camera conventions of nsff_core.model.rays: normalisation, pixel rays, NDC, projection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from nsff_core.model import cameras as cam
from nsff_core.model import rays

HW = (12, 16)
K = cam.intrinsics_matrix(14.0, 15.0, (HW[1] - 1) / 2, (HW[0] - 1) / 2)


def _scene(seed: int = 0, n: int = 5, m: int = 40):
    """OpenCV-axes poses of a forward-facing rig in an arbitrary SfM frame (random rotation,
    translation, scale) and world points in front of every camera, with their depths."""
    rng = np.random.default_rng(seed)
    rig = np.stack(
        [
            cam.rigid_matrix(
                Rotation.from_rotvec(rng.normal(0, 0.08, 3)).as_matrix(),
                [0.3 * i, rng.normal(0, 0.05), 0.1 * rng.normal()],
            )
            for i in range(n)
        ]
    )
    # points 2..8 units in front of the rig, spread within the view of the first camera
    z = rng.uniform(2.0, 8.0, m)
    xy = rng.uniform(-0.3, 0.3, (m, 2)) * z[:, None]
    pts = np.concatenate([xy, z[:, None]], axis=1)
    s, R, t = 2.7, Rotation.random(random_state=seed).as_matrix(), rng.normal(0, 5, 3)
    c2w = cam.transform_c2w(s, R, t, rig)
    pts = cam.apply_similarity(s, R, t, pts)
    depths = np.stack([cam.project(K, c, pts)[1] for c in c2w])
    assert (depths > 0).all()
    return c2w, pts, depths


def _normalised(seed: int = 0):
    c2w, pts, depths = _scene(seed)
    near_depth = 0.75 * depths.min()
    c2w_n, norm = rays.normalize_poses(c2w, near_depth)
    return c2w, pts, depths, near_depth, c2w_n, norm


# --------------------------------------------------------------------------- normalisation


def test_normalisation_average_pose_and_depths():
    c2w, pts, depths, near_depth, c2w_n, norm = _normalised()
    assert c2w_n.shape == (5, 4, 4)
    np.testing.assert_allclose(rays.average_pose(c2w_n), np.eye(4), atol=1e-9)
    assert norm.scale == pytest.approx(1.0 / near_depth)
    # rotations stay orthonormal; axes are OpenGL (the average camera looks along -z)
    R = c2w_n[:, :3, :3]
    np.testing.assert_allclose(
        R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12
    )
    # camera depths scale by 1 / near_depth: the nearest content sits at 1 / 0.75
    pts_n = norm.apply_points(pts)
    depth_n = np.stack([-cam.world_to_camera(c, pts_n)[:, 2] for c in c2w_n])
    np.testing.assert_allclose(depth_n, depths / near_depth, rtol=1e-10)
    assert depth_n.min() == pytest.approx(1.0 / 0.75)
    # everything is in front of the average camera (NSFF world z < 0) past the near plane
    assert (pts_n[:, 2] < -1.0).all()


def test_normalisation_apply_c2w_points_and_dict():
    c2w, pts, _, _, c2w_n, norm = _normalised(1)
    np.testing.assert_allclose(norm.apply_c2w(c2w), c2w_n, atol=1e-12)
    np.testing.assert_allclose(norm.apply_c2w(c2w[:, :3]), c2w_n, atol=1e-12)
    np.testing.assert_allclose(norm.apply_c2w(c2w[2]), c2w_n[2], atol=1e-12)
    np.testing.assert_allclose(norm.apply_points(c2w[:, :3, 3]), c2w_n[:, :3, 3], atol=1e-12)
    np.testing.assert_allclose(norm.unapply_points(norm.apply_points(pts)), pts, atol=1e-9)
    np.testing.assert_allclose(rays.flip_yz_axes(rays.flip_yz_axes(c2w)), c2w)
    # a camera-path pose (SfM frame, OpenCV axes) sees the points at the same pixels
    novel = cam.rigid_matrix(
        c2w[1, :3, :3] @ Rotation.from_rotvec([0.05, -0.1, 0.2]).as_matrix(),
        c2w[1, :3, 3] + 0.2 * c2w[1, :3, 0],
    )
    P = rays.projection_matrices(K, norm.apply_c2w(novel))
    uv = rays.project_points(P, torch.tensor(norm.apply_points(pts)))
    np.testing.assert_allclose(uv.numpy(), cam.project(K, novel, pts)[0], atol=1e-9)
    d = json.loads(json.dumps(norm.to_dict()))
    back = rays.SceneNormalization.from_dict(d)
    np.testing.assert_array_equal(back.matrix, norm.matrix)
    assert back.scale == norm.scale
    tens = rays.SceneNormalization.from_dict(
        {"matrix": torch.tensor(norm.matrix), "scale": norm.scale}
    )
    np.testing.assert_array_equal(tens.matrix, norm.matrix)
    with pytest.raises(ValueError):
        rays.normalize_poses(c2w, 0.0)
    with pytest.raises(ValueError):
        rays.SceneNormalization(matrix=np.diag([1.0, 2.0, 1.0, 1.0]), scale=1.0)


# --------------------------------------------------------------------------- rays, projection


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_projection_matches_opencv_and_rays(dtype):
    c2w, pts, depths, _, c2w_n, norm = _normalised(2)
    tol = 1e-8 if dtype == torch.float64 else 2e-3
    P = rays.projection_matrices(K, torch.tensor(c2w_n, dtype=dtype))
    assert P.shape == (5, 3, 4) and P.dtype == dtype
    X = torch.tensor(norm.apply_points(pts), dtype=dtype)
    for i in range(len(c2w)):
        xy_cv, z_cv = cam.project(K, c2w[i], pts)
        # normalisation does not move pixels: same pixel as OpenCV projection in the SfM frame
        uv, z = rays.project_points_depth(P[i], X)
        np.testing.assert_allclose(uv.numpy(), xy_cv, atol=tol * 10)
        np.testing.assert_allclose(z.numpy(), z_cv * norm.scale, rtol=tol)
        # batched P (B, 3, 4) with one frame per point
        uv_b = rays.project_points(P[i].expand(len(X), 3, 4), X)
        np.testing.assert_allclose(uv_b.numpy(), uv.numpy(), atol=tol)
        # the ray through that pixel passes through the point
        o, d = rays.get_rays_at(K, torch.tensor(c2w_n[i], dtype=dtype), uv)
        v = X - o
        s = (v * d).sum(-1)
        assert (s > 0).all()
        np.testing.assert_allclose(torch.linalg.cross(v, d).norm(dim=-1).numpy(), 0, atol=tol)
        np.testing.assert_allclose(s.numpy(), (X - o).norm(dim=-1).numpy(), rtol=tol)


def test_get_rays_grid_and_principal_ray():
    c2w_n = torch.tensor(_normalised(3)[4][1])
    o, d = rays.get_rays(K, c2w_n, HW)
    assert o.shape == d.shape == (HW[0] * HW[1], 3)
    np.testing.assert_allclose(d.norm(dim=-1).numpy(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(o.numpy(), np.broadcast_to(c2w_n[:3, 3].numpy(), o.shape))
    # row-major: index y * W + x is pixel (x, y)
    x, y = 5, 7
    _, d_xy = rays.get_rays_at(K, c2w_n[:3], torch.tensor([[x, y]], dtype=torch.float64))
    np.testing.assert_allclose(d[y * HW[1] + x].numpy(), d_xy[0].numpy(), atol=1e-15)
    # the principal point looks along the camera's -z axis (forward)
    _, d_pp = rays.get_rays_at(K, c2w_n, torch.tensor(K[:2, 2]))
    np.testing.assert_allclose(d_pp.numpy(), -c2w_n[:3, 2].numpy(), atol=1e-12)
    # pixel row y grows downwards = along the camera's -y (NSFF y is up)
    _, d_down = rays.get_rays_at(K, c2w_n, torch.tensor(K[:2, 2] + [0, 1.0]))
    assert float((d_down - d_pp) @ c2w_n[:3, 1]) < 0


# --------------------------------------------------------------------------- NDC


def test_ndc_round_trip():
    g = torch.Generator().manual_seed(0)
    Z = -(1.0 + 60.0 * torch.rand(200, generator=g, dtype=torch.float64))
    XY = (torch.rand(200, 2, generator=g, dtype=torch.float64) - 0.5) * Z.abs().unsqueeze(-1)
    pts = torch.cat([XY, Z.unsqueeze(-1)], dim=-1)
    ndc = rays.world_to_ndc(pts, K)
    assert ((ndc[:, 2] >= -1) & (ndc[:, 2] < 1)).all()
    np.testing.assert_allclose(rays.ndc_to_world(ndc, K, eps=0.0).numpy(), pts.numpy(), rtol=1e-12)
    np.testing.assert_allclose(rays.ndc_to_world(ndc, K).numpy(), pts.numpy(), rtol=1e-4)
    # float32 and a numpy K also work; infinity (z = 1) stays finite thanks to eps
    back = rays.ndc_to_world(ndc.float(), K)
    assert back.dtype == torch.float32
    np.testing.assert_allclose(back.numpy(), pts.numpy(), rtol=1e-3)
    assert torch.isfinite(rays.ndc_to_world(torch.tensor([[0.2, 0.1, 1.0]]), K)).all()


def test_ndc_covers_image_of_reference_camera():
    """Image edges (-0.5, W - 0.5) map to NDC x, y = -1, 1 for the average camera; the
    origin lands on the near plane (NDC z = -1)."""
    corners = torch.tensor([[-0.5, -0.5], [HW[1] - 0.5, HW[0] - 0.5]], dtype=torch.float64)
    o, d = rays.get_rays_at(K, torch.eye(4, dtype=torch.float64), corners)
    o_ndc, d_ndc = rays.rays_to_ndc(o, d, K)
    np.testing.assert_allclose(o_ndc.numpy(), [[-1, 1, -1], [1, -1, -1]], atol=1e-12)
    # a camera-axis ray: NDC direction is straight along +z with length 2
    np.testing.assert_allclose(d_ndc[0].numpy(), [0, 0, 2], atol=1e-12)


@pytest.mark.parametrize("oz", [0.4, -0.2, -2.5])
def test_rays_to_ndc_shift_and_points_on_ray(oz):
    g = torch.Generator().manual_seed(1)
    n = 64
    o = torch.tensor([0.3, -0.2, oz], dtype=torch.float64).expand(n, 3)
    d = torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.3
    d[:, 2] = -1.0
    d = d / d.norm(dim=-1, keepdim=True)
    o_ndc, d_ndc = rays.rays_to_ndc(o, d, K)
    shift = max(1.0, -oz)
    # the origin moved along the ray onto Z = -shift (a camera past the plane stays put)
    np.testing.assert_allclose(o_ndc[:, 2].numpy(), 1.0 - 2.0 / shift, atol=1e-12)
    if oz <= -1.0:
        np.testing.assert_allclose(o_ndc.numpy(), rays.world_to_ndc(o, K).numpy(), atol=1e-12)
    # points on the world ray beyond the shifted origin lie on the NDC ray, with t in [0, 1)
    s0 = (-(shift + oz) / d[:, 2]).unsqueeze(-1)
    for s in (0.0, 0.5, 3.0, 100.0):
        x = o + (s0 + s) * d
        x_ndc = rays.world_to_ndc(x, K)
        t = (x_ndc[:, 2] - o_ndc[:, 2]) / d_ndc[:, 2]
        assert ((t >= -1e-12) & (t < 1)).all()
        expected = o_ndc + t.unsqueeze(-1) * d_ndc
        np.testing.assert_allclose(x_ndc.numpy(), expected.numpy(), atol=1e-10)
        z_world = x[:, 2]
        np.testing.assert_allclose(
            t.numpy(), (1 - o_ndc.new_tensor(-shift) / z_world).numpy(), atol=1e-12
        )
    # NDC is a property of the ray, not of the direction's length
    o2, d2 = rays.rays_to_ndc(o, 3.0 * d, K)
    np.testing.assert_allclose(o2.numpy(), o_ndc.numpy(), atol=1e-12)
    np.testing.assert_allclose(d2.numpy(), d_ndc.numpy(), atol=1e-12)


def test_ndc_extent_covers_turned_and_moved_cameras():
    """The NDC box of the training rays: 1 for the reference camera itself; tan(fov/2 + yaw)
    over tan(fov/2) in x for a camera turned by yaw (its rays' far ends); larger for a camera
    moved sideways (its near ends shift)."""
    w, h = 64, 48
    k = cam.intrinsics_matrix(40.0, 40.0, (w - 1) / 2, (h - 1) / 2)
    eye = np.eye(4)
    assert rays.ndc_extent(k, eye[None], (h, w)) == (1.0, 1.0)
    yaw = np.deg2rad(15.0)
    turned = eye.copy()
    turned[:3, :3] = Rotation.from_rotvec([0.0, yaw, 0.0]).as_matrix()
    ex, ey = rays.ndc_extent(k, np.stack([eye, turned]), (h, w))
    half = np.arctan(((w - 1) / 2) / 40.0)  # the border pixel centre's angle
    want = np.tan(half + yaw) / (32.0 / 40.0)  # ax = fx / (cx + 0.5)
    assert ex == pytest.approx(want, rel=1e-6)
    assert ey > 1.0  # a turned camera's corner rays also climb in y
    moved = eye.copy()
    moved[0, 3] = 0.5
    ex_moved, ey_moved = rays.ndc_extent(k, np.stack([eye, moved]), (h, w))
    # the near end of its border ray: x = 0.5 + 31.5 / 40 on the near plane, times ax = 40 / 32
    assert ex_moved == pytest.approx((0.5 + 31.5 / 40.0) * 40.0 / 32.0, rel=1e-9)
    assert ey_moved == 1.0
