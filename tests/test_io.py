import os
import stat

import numpy as np
import pytest

from nsff_core.errors import CorruptFileError
from nsff_core.model import io


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


# --------------------------------------------------------------------------- one image reader


def _pil_save(path, array, mode, **kwargs):
    from PIL import Image

    Image.fromarray(array, mode).save(path, **kwargs)
    return path


def test_read_image_scales_16_bit_linearly(tmp_path):
    import cv2

    grey = np.array([[0, 1, 128, 129, 257, 32768, 65534, 65535]], np.uint16).repeat(3, 0)
    cv2.imwrite(str(tmp_path / "g16.png"), grey)
    rgb = io.read_image(tmp_path / "g16.png")
    assert rgb.shape == (3, 8, 3) and rgb.dtype == np.uint8
    expected = np.round(grey[0] / 65535 * 255).astype(np.uint8)  # 65535 -> 255, linear
    assert rgb[0, :, 0].tolist() == expected.tolist() == [0, 0, 0, 1, 1, 128, 255, 255]
    assert (rgb == rgb[..., :1]).all()  # grey in all three channels
    colour = np.zeros((4, 5, 3), np.uint16)
    colour[..., 0], colour[..., 1], colour[..., 2] = 65535, 257 * 100, 257 * 7  # BGR on disk
    cv2.imwrite(str(tmp_path / "c16.png"), colour)
    assert io.read_image(tmp_path / "c16.png")[0, 0].tolist() == [7, 100, 255]  # RGB


@pytest.mark.parametrize("kind", ["L", "LA", "RGBA", "P", "P_transparent", "1"])
def test_read_image_converts_every_layout_to_rgb(tmp_path, kind):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (6, 9, 3), dtype=np.uint8)
    grey = rgb[..., 0]
    path = tmp_path / f"{kind}.png"
    if kind == "L":
        _pil_save(path, grey, "L")
        expected = np.repeat(grey[..., None], 3, 2)
    elif kind == "LA":
        _pil_save(path, np.dstack([grey, np.zeros_like(grey)]), "LA")
        expected = np.repeat(grey[..., None], 3, 2)  # alpha dropped, grey kept under it
    elif kind == "RGBA":
        _pil_save(path, np.dstack([rgb, np.zeros_like(grey)]), "RGBA")
        expected = rgb  # fully transparent, colour kept
    elif kind == "1":
        from PIL import Image

        Image.fromarray(grey > 127).save(path)  # a bool array is a 1-bit image
        expected = np.repeat(np.where(grey > 127, 255, 0)[..., None], 3, 2)
    else:
        from PIL import Image

        pal = Image.fromarray(rgb).quantize(colors=16)
        if kind == "P_transparent":
            pal.save(path, transparency=0)
        else:
            pal.save(path)
        expected = np.asarray(pal.convert("RGB"))
    got = io.read_image(path)
    assert got.shape == (6, 9, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_read_image_applies_the_exif_orientation(tmp_path):
    from PIL import Image, ImageOps

    stored = np.zeros((48, 64, 3), np.uint8)
    stored[:16, :24] = (255, 0, 0)  # a red block at the top left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _pil_save(tmp_path / "photo.jpg", stored, "RGB", exif=exif.tobytes(), quality=95)
    got = io.read_image(path)
    assert got.shape == (64, 48, 3)  # shown upright: portrait
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert upright.shape == got.shape
    assert np.abs(got.astype(int) - upright).mean() < 2  # two JPEG decoders: +-1 levels
    assert got[:24, -16:, 0].mean() > 200 and got[-24:, :16, 0].mean() < 50  # block top right


def test_read_image_refuses_float_samples_clearly(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "hdr.tiff"), np.full((8, 8), 0.5, np.float32))
    with pytest.raises(CorruptFileError, match="float32 samples are not supported") as info:
        io.read_image(tmp_path / "hdr.tiff")
    assert info.value.path == str(tmp_path / "hdr.tiff") and info.value.made_by is None


# --------------------------------------------------------------------------- corrupt files


def _cameras(path, n=3):
    io.write_cameras(
        path, np.tile(np.eye(4), (n, 1, 1)), np.eye(3), (8, 10), np.ones(n), 2 * np.ones(n),
        [f"{i:05d}.png" for i in range(n)],
    )  # fmt: skip
    return path


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _garble(path, start=0, length=64):
    data = bytearray(path.read_bytes())
    data[start : start + length] = bytes(b ^ 0x5A for b in data[start : start + length])
    path.write_bytes(bytes(data))


def _flo(path, flow=None):
    io.write_flo(path, np.zeros((8, 10, 2), np.float32) if flow is None else flow)
    return path


CORRUPT_CASES = {
    # name: (make the file in a folder, corrupt it, reader, rule that writes it, in a folder)
    "cameras_truncated": (lambda d: _cameras(d / "cameras.npz"), _truncate, io.read_cameras),
    "cameras_garbled": (lambda d: _cameras(d / "cameras.npz"), _garble, io.read_cameras),
    "cameras_crc": (lambda d: _cameras(d / "cameras.npz"), lambda p: _garble(p, 200, 20),
                    io.read_cameras),
    "cameras_missing_key": (lambda d: d / "cameras.npz", lambda p: np.savez(p, c2w=np.eye(4)[None]),
                            io.read_cameras),
    "cameras_nan": (lambda d: d / "cameras.npz", lambda p: io.write_cameras(
        p, np.full((1, 4, 4), np.nan), np.eye(3), (8, 10), [1], [2], ["a"]), io.read_cameras),
    "cameras_wrong_shape": (lambda d: d / "cameras.npz", lambda p: io.write_cameras(
        p, np.eye(4)[None], np.eye(4), (8, 10), [1], [2], ["a"]), io.read_cameras),
    "cameras_empty": (lambda d: _cameras(d / "cameras.npz"), lambda p: p.write_bytes(b""),
                      io.read_cameras),
    "poses_bounds_truncated": (lambda d: d / "poses_bounds.npy",
                               lambda p: (np.save(p, np.zeros((3, 17))), _truncate(p)),
                               lambda p: io.read_poses_bounds(p)),
    "poses_bounds_shape": (lambda d: d / "poses_bounds.npy", lambda p: np.save(p, np.zeros((3, 5))),
                           lambda p: io.read_poses_bounds(p)),
    "flo_truncated": (lambda d: _flo(d / "00000.flo"), _truncate, io.read_flo),
    "flo_garbled": (lambda d: _flo(d / "00000.flo"), lambda p: _garble(p, 0, 4), io.read_flo),
    "flo_bad_size": (lambda d: _flo(d / "00000.flo"), lambda p: _garble(p, 4, 8), io.read_flo),
    "flo_too_long": (lambda d: _flo(d / "00000.flo"),
                     lambda p: p.write_bytes(p.read_bytes() + b"\0" * 8), io.read_flo),
    "flo_nan": (lambda d: d / "00000.flo",
                lambda p: _flo(p, np.full((8, 10, 2), np.nan, np.float32)), io.read_flo),
    "disp_garbled": (lambda d: d / "00000.npy", lambda p: p.write_bytes(b"garbage" * 20),
                     io.read_disparity),
    "disp_truncated": (lambda d: d / "00000.npy",
                       lambda p: (np.save(p, np.ones((8, 10), np.float32)), _truncate(p)),
                       io.read_disparity),
    "disp_3d": (lambda d: d / "00000.npy", lambda p: np.save(p, np.ones((8, 10, 3))),
                io.read_disparity),
    "disp_inf": (lambda d: d / "00000.npy", lambda p: np.save(p, np.full((8, 10), np.inf)),
                 io.read_disparity),
    "mask_truncated": (lambda d: d / "00000.png",
                       lambda p: (io.write_mask(p, np.eye(8, 10, dtype=bool)), _truncate(p)),
                       io.read_mask),
    "frame_truncated": (lambda d: d / "00000.png",
                        lambda p: (io.write_image(p, np.zeros((8, 10, 3), np.uint8)),
                                   _truncate(p)),
                        lambda p: io.read_image(p, made_by="frames")),
}  # fmt: skip
#: the rule that writes each kind of file, and whether it is one file of a folder output
MADE_BY = {"cameras": ("sfm", False), "poses": ("sfm", False), "flo": ("flow", True),
           "disp": ("depth", True), "mask": ("masks", True), "frame": ("frames", True)}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CORRUPT_CASES))
def test_corrupt_files_name_the_file_and_the_rule_that_writes_it(tmp_path, case):
    make, corrupt, read = CORRUPT_CASES[case]
    folder = tmp_path / "results" / "s" / "out"
    folder.mkdir(parents=True)
    path = make(folder)
    corrupt(path)
    with pytest.raises(CorruptFileError) as info:
        read(path)
    made_by, in_folder = MADE_BY[case.split("_")[0]]
    err = info.value
    assert err.path == str(path) and err.made_by == made_by, (err.path, err.made_by)
    assert str(path) in str(err)
    # as run_stage reports it: scene, reading rule, the file, and what to delete
    msg = str(err.to_stage_error("s", "train"))
    assert "scene 's', rule 'train'" in msg and str(path) in msg, msg
    assert f"rule '{made_by}' writes it again" in msg, msg
    to_delete = f"delete the folder {folder} " if in_folder else f"delete {path} "
    assert to_delete in msg, msg


def test_good_files_still_read(tmp_path):
    cams = io.read_cameras(_cameras(tmp_path / "cameras.npz"))
    assert cams["c2w"].shape == (3, 4, 4) and cams["names"].tolist()[0] == "00000.png"
    np.save(tmp_path / "pb.npy", np.zeros((3, 17)))
    assert io.read_poses_bounds(tmp_path / "pb.npy").shape == (3, 17)
    np.save(tmp_path / "d.npy", np.ones((8, 10), np.float64))
    disp = io.read_disparity(tmp_path / "d.npy")
    assert disp.dtype == np.float32 and disp.shape == (8, 10)


# --------------------------------------------------------------------------- file modes


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_atomic_outputs_get_the_modes_of_the_umask(tmp_path, umask):
    assert io.current_umask() == umask
    with io.atomic_file(tmp_path / "results" / "summary.csv") as p:
        p.write_text("x")
    with io.atomic_dir(tmp_path / "results" / "frames") as d:
        (d / "00000.png").write_bytes(b"x")
        (d / "sub").mkdir()

    def mode(p):
        return stat.S_IMODE(os.stat(p).st_mode)

    assert mode(tmp_path / "results" / "summary.csv") == 0o666 & ~umask
    assert mode(tmp_path / "results" / "frames") == 0o777 & ~umask
    # what the block creates inside the folder already follows the umask
    assert mode(tmp_path / "results" / "frames" / "00000.png") == 0o666 & ~umask
    assert mode(tmp_path / "results" / "frames" / "sub") == 0o777 & ~umask


def test_atomic_dir_keeps_the_setgid_bit_of_a_group_folder(tmp_path, umask):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2775)
    if not os.stat(shared).st_mode & stat.S_ISGID:
        pytest.skip("this file system does not keep the setgid bit")
    with io.atomic_dir(shared / "frames"):
        pass
    st = os.stat(shared / "frames")
    assert st.st_mode & stat.S_ISGID and stat.S_IMODE(st.st_mode) & 0o777 == 0o777 & ~umask


def test_current_umask_without_proc(monkeypatch, umask):
    class NoProc(type(io.Path())):
        def read_text(self, *args, **kwargs):
            raise OSError("no /proc here")

    monkeypatch.setattr(io, "Path", NoProc)
    assert io.current_umask() == umask
    assert os.umask(umask) == umask  # restored
