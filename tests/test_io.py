import numpy as np
import pytest

from nsff_core import io


def test_flo_round_trip_and_layout(tmp_path):
    rng = np.random.default_rng(0)
    flow = rng.normal(size=(5, 7, 2)).astype(np.float32)
    path = tmp_path / "a.flo"
    io.write_flo(path, flow)
    np.testing.assert_array_equal(io.read_flo(path), flow)
    raw = path.read_bytes()
    # Middlebury layout: magic, width, height, then interleaved (u, v) row-major
    assert np.frombuffer(raw[:4], "<f4")[0] == np.float32(202021.25)
    assert tuple(np.frombuffer(raw[4:12], "<i4")) == (7, 5)
    assert np.frombuffer(raw[12:20], "<f4").tolist() == flow[0, 0].tolist()
    assert len(raw) == 12 + 5 * 7 * 2 * 4


def test_read_flo_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.flo"
    bad.write_bytes(b"not a flow file at all")
    with pytest.raises(ValueError, match="magic"):
        io.read_flo(bad)
    good = tmp_path / "trunc.flo"
    io.write_flo(good, np.zeros((4, 4, 2), np.float32))
    trunc = tmp_path / "t.flo"
    trunc.write_bytes(good.read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated"):
        io.read_flo(trunc)


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with io.atomic_dir(target) as d:
            (d / "x.txt").write_text("partial")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with io.atomic_dir(target) as d:
        (d / "x.txt").write_text("done")
    assert (target / "x.txt").read_text() == "done"


def test_atomic_file(tmp_path):
    target = tmp_path / "a.json"
    with pytest.raises(KeyError):
        with io.atomic_file(target) as p:
            p.write_text("{")
            raise KeyError("x")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_scratch_of_a_killed_run_is_removed_by_the_next_success(tmp_path):
    # what a SIGKILL leaves: scratch next to the outputs (the clean-up never ran)
    (tmp_path / ".frames.tmp-dead1").mkdir()
    (tmp_path / ".frames.tmp-dead1" / "00000.png").write_bytes(b"x")
    (tmp_path / ".cameras.tmp-dead2.npz").write_bytes(b"x")
    (tmp_path / ".frames.tmp-dead3.json").write_bytes(b"x")  # another output's scratch
    with io.atomic_dir(tmp_path / "frames") as d:
        (d / "00000.png").write_bytes(b"ok")
    with io.atomic_file(tmp_path / "cameras.npz") as p:
        p.write_bytes(b"ok")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".frames.tmp-dead3.json", "cameras.npz", "frames"]
    with io.atomic_file(tmp_path / "frames.json") as p:
        p.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cameras.npz", "frames", "frames.json"]


def test_image_and_mask_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (6, 9, 3), dtype=np.uint8)
    io.write_image(tmp_path / "a.png", img)
    np.testing.assert_array_equal(io.read_image(tmp_path / "a.png"), img)
    mask = rng.random((6, 9)) > 0.5
    io.write_mask(tmp_path / "m.png", mask)
    np.testing.assert_array_equal(io.read_mask(tmp_path / "m.png"), mask)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="decode"):
        io.read_image(tmp_path / "corrupt.png")


def _look_at(centre, target):
    z = target - centre
    z = z / np.linalg.norm(z)
    x = np.cross([0.0, 1.0, 0.0], z)  # OpenCV: y down, so "up" is -y
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, y, z], -1)
    c2w[:3, 3] = centre
    return c2w


def test_cameras_and_llff_poses_bounds(tmp_path):
    c2w = np.stack([_look_at(np.array([x, 0.1, 0.0]), np.array([0, 0, 5.0])) for x in (0, 0.5)])
    K = np.array([[300.0, 0, 160], [0, 300, 90], [0, 0, 1]])
    io.write_cameras(tmp_path / "c.npz", c2w, K, (180, 320), [1, 2], [10, 20], ["a", "b"])
    cams = io.read_cameras(tmp_path / "c.npz")
    np.testing.assert_allclose(cams["c2w"], c2w)
    assert cams["hw"].tolist() == [180, 320] and cams["registered"].all()
    io.write_poses_bounds(tmp_path / "pb.npy", c2w, K, (180, 320), [1, 2], [10, 20])
    pb = np.load(tmp_path / "pb.npy")
    assert pb.shape == (2, 17)
    m = pb[:, :15].reshape(2, 3, 5)
    # LLFF columns: down (= OpenCV y), right (= OpenCV x), backwards (= -OpenCV z)
    np.testing.assert_allclose(m[:, :, 0], c2w[:, :3, 1])
    np.testing.assert_allclose(m[:, :, 1], c2w[:, :3, 0])
    np.testing.assert_allclose(m[:, :, 2], -c2w[:, :3, 2])
    np.testing.assert_allclose(m[:, :, 3], c2w[:, :3, 3])
    np.testing.assert_allclose(m[0, :, 4], [180, 320, 300])
    np.testing.assert_allclose(pb[:, 15:], [[1, 10], [2, 20]])
