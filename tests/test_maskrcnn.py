"""Mask R-CNN masks backend: class filtering, dilation, union, output format. Random weights or a
stand-in network only, nothing downloaded."""

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from nsff_core.errors import ConfigError, StageError  # noqa: E402
from nsff_core.io import frame_name, read_mask, write_mask  # noqa: E402
from nsff_core.priors.maskrcnn import (  # noqa: E402
    COCO_CLASSES,
    DEFAULT_DYNAMIC_CLASSES,
    TORCHVISION_COCO_CATEGORIES,
    compute_masks_detectron2,
    compute_masks_maskrcnn,
    detectron2_label_ids,
    dilate,
    instances_to_mask,
    load_maskrcnn,
    resolve_classes,
    torchvision_label_ids,
)

PERSON, DOG, CHAIR = 1, 18, 62  # torchvision label ids


def test_category_list_matches_torchvision_weights_meta():
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_V2_Weights

    meta = MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1.meta["categories"]
    assert list(TORCHVISION_COCO_CATEGORIES) == list(meta)
    assert len(COCO_CLASSES) == 80
    assert TORCHVISION_COCO_CATEGORIES[PERSON] == "person"
    assert TORCHVISION_COCO_CATEGORIES[DOG] == "dog"
    assert TORCHVISION_COCO_CATEGORIES[CHAIR] == "chair"


def test_resolve_classes_groups_and_ids():
    assert resolve_classes(["people", "dog", "person"]) == ("person", "dog")
    assert resolve_classes(["people", "animals", "vehicles"]) == DEFAULT_DYNAMIC_CLASSES
    assert len(DEFAULT_DYNAMIC_CLASSES) == 19 and "car" in DEFAULT_DYNAMIC_CLASSES
    assert torchvision_label_ids(["person", "dog"]) == {PERSON, DOG}
    assert detectron2_label_ids(["person", "dog"]) == {0, 16}


def test_unknown_class_names_are_listed():
    with pytest.raises(ConfigError, match=r"\['pedestrian'\].*valid names: person, bicycle"):
        resolve_classes(["person", "pedestrian"])
    with pytest.raises(ConfigError, match="empty"):
        resolve_classes([])


def _square(h, w, y0, x0, s, value=1.0):
    m = np.zeros((h, w), np.float32)
    m[y0 : y0 + s, x0 : x0 + s] = value
    return m


def test_instances_to_mask_keeps_configured_classes_above_threshold():
    h, w = 40, 50
    masks = np.stack(
        [
            _square(h, w, 2, 2, 8, 0.9),  # person, 0.9: kept
            _square(h, w, 20, 2, 8, 0.9),  # dog, 0.3: below the threshold
            _square(h, w, 2, 30, 8, 0.9),  # chair, 0.95: not a configured class
            _square(h, w, 20, 30, 8, 0.4),  # person, 0.8, but mask probability 0.4 <= 0.5
        ]
    )[:, None]
    labels = np.array([PERSON, DOG, CHAIR, PERSON])
    scores = np.array([0.9, 0.3, 0.95, 0.8])
    classes = torchvision_label_ids(["person", "dog"])
    got = instances_to_mask(labels, scores, masks, classes, score_threshold=0.5)
    assert got.dtype == bool and got.shape == (h, w)
    np.testing.assert_array_equal(got, masks[0, 0] > 0.5)
    # a lower threshold adds the dog; torch inputs give the same answer
    got_t = instances_to_mask(
        torch.from_numpy(labels), torch.from_numpy(scores), torch.from_numpy(masks), classes, 0.25
    )
    np.testing.assert_array_equal(got_t, (masks[0, 0] > 0.5) | (masks[1, 0] > 0.5))
    # nothing kept / no instances at all
    assert not instances_to_mask(labels, scores, masks, {CHAIR}, 0.99).any()
    empty = instances_to_mask(np.zeros(0), np.zeros(0), np.zeros((0, 1, h, w)), classes, 0.5)
    assert empty.shape == (h, w) and not empty.any()


def test_dilation_grows_a_square_by_the_right_amount():
    m = _square(40, 40, 15, 15, 10) > 0  # rows/cols 15..24
    for px in (1, 3, 5):
        d = dilate(m, px)
        ys, xs = np.nonzero(d)
        assert (ys.min(), ys.max(), xs.min(), xs.max()) == (15 - px, 24 + px, 15 - px, 24 + px)
        assert d[m].all()
        assert d[20, 15 - px] and not d[20, 15 - px - 1]  # grown by px along the axes
        assert not d[15 - px, 15 - px]  # disk: the corners stay round
    np.testing.assert_array_equal(dilate(m, 0), m)


class FakeMaskRCNN(torch.nn.Module):
    """Stand-in with torchvision's detection interface: per image a person over the left
    quarter and a chair over the right quarter (rows 1/4..3/4)."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.roi_heads = type("RoiHeads", (), {"score_thresh": 0.05})()

    def forward(self, images):
        out = []
        for img in images:
            h, w = img.shape[-2:]
            m = torch.zeros(2, 1, h, w)
            m[0, 0, h // 4 : 3 * h // 4, : w // 4] = 1
            m[1, 0, h // 4 : 3 * h // 4, 3 * w // 4 :] = 1
            out.append(
                {
                    "labels": torch.tensor([PERSON, CHAIR]),
                    "scores": torch.tensor([0.9, 0.9]),
                    "masks": m,
                    "boxes": torch.zeros(2, 4),
                }
            )
        return out


def test_compute_masks_maskrcnn_format_dilation_and_union(tmp_path):
    frames = [np.full((80, 120, 3), 10 * i, np.uint8) for i in range(3)]
    out_hw = (40, 60)
    epi = [np.zeros(out_hw, bool) for _ in range(3)]
    epi[1][0:3, 50:53] = True  # a mover outside COCO in frame 1
    summary = compute_masks_maskrcnn(
        frames,
        tmp_path / "masks",
        out_hw,
        classes=["people"],
        dilate_px=2,
        union_with=epi,
        model=FakeMaskRCNN(),
        batch_size=2,
    )
    assert summary["frames"] == 3 and summary["instances"] == {"person": 3}
    files = sorted((tmp_path / "masks").iterdir())
    assert [p.name for p in files] == [frame_name(i) for i in range(3)]
    import cv2

    raw = cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint8 and raw.shape == out_hw and set(np.unique(raw)) == {0, 255}
    person = np.zeros(out_hw, bool)
    person[10:30, 0:15] = True  # the left quarter at training resolution
    expected = dilate(person, 2)
    np.testing.assert_array_equal(read_mask(files[0]), expected)
    np.testing.assert_array_equal(read_mask(files[1]), expected | epi[1])  # union, not dilated
    assert not read_mask(files[2])[:, 40:].any()  # the chair is not a dynamic class


def test_union_with_a_folder_of_epipolar_masks(tmp_path):
    out_hw = (20, 30)
    epi_dir = tmp_path / "epi"
    epi_dir.mkdir()
    for i in range(2):
        m = np.zeros(out_hw, bool)
        m[i, i] = True
        write_mask(epi_dir / frame_name(i), m)
    frames = [np.zeros((20, 30, 3), np.uint8)] * 2
    compute_masks_maskrcnn(
        frames, tmp_path / "masks", out_hw, dilate_px=0, union_with=epi_dir, model=FakeMaskRCNN()
    )
    assert read_mask(tmp_path / "masks" / "00001.png")[1, 1]
    with pytest.raises(StageError, match="3 epipolar masks"):
        write_mask(epi_dir / frame_name(2), np.zeros(out_hw, bool))
        compute_masks_maskrcnn(
            frames, tmp_path / "m2", out_hw, union_with=epi_dir, model=FakeMaskRCNN()
        )
    assert not (tmp_path / "m2").exists()


def test_random_weight_maskrcnn_runs_end_to_end(tmp_path):
    torch.manual_seed(0)
    model = load_maskrcnn(None, "cpu")
    model.transform.min_size, model.transform.max_size = (64,), 128  # keep the test fast
    frames = [np.random.default_rng(i).integers(0, 256, (48, 64, 3), np.uint8) for i in range(2)]
    summary = compute_masks_maskrcnn(
        frames, tmp_path / "masks", (24, 32), score_threshold=0.0, model=model
    )
    assert summary["frames"] == 2 and model.roi_heads.score_thresh == 0.0
    for i in range(2):
        assert read_mask(tmp_path / "masks" / frame_name(i)).shape == (24, 32)


def test_unknown_class_fails_before_loading_a_model(tmp_path):
    with pytest.raises(StageError, match="unknown COCO class.*pedestrian") as e:
        compute_masks_maskrcnn([], tmp_path / "m", (8, 8), classes=["pedestrian"], scene="s")
    assert "masks.classes" in str(e.value) and "scene 's'" in str(e.value)


def test_load_maskrcnn_checkpoint_errors(tmp_path):
    with pytest.raises(StageError, match="not found"):
        load_maskrcnn(tmp_path / "missing.pth", "cpu")
    bad = tmp_path / "bad.pth"
    torch.save({"backbone.body.conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(StageError, match="not a torchvision Mask R-CNN"):
        load_maskrcnn(bad, "cpu")


def test_detectron2_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "detectron2", None)  # import detectron2 -> ImportError
    with pytest.raises(StageError, match="detectron2 package is not installed") as e:
        compute_masks_detectron2([np.zeros((8, 8, 3), np.uint8)], tmp_path / "m", (8, 8))
    assert "pip install" in str(e.value) and "maskrcnn" in str(e.value)
    assert not (tmp_path / "m").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_half_precision_batch(tmp_path):
    model = load_maskrcnn(None, "cuda")
    model.transform.min_size, model.transform.max_size = (64,), 128
    frames = [np.random.default_rng(i).integers(0, 256, (48, 64, 3), np.uint8) for i in range(5)]
    summary = compute_masks_maskrcnn(
        frames, tmp_path / "masks", (24, 32), score_threshold=0.0, model=model
    )
    assert summary["frames"] == 5 and summary["device"].startswith("cuda")
    assert read_mask(tmp_path / "masks" / "00004.png").shape == (24, 32)


# --------------------------------------------------------------------------- detectron2 weights


class _RunsCode:
    """Unpickling this runs code: it writes ``path`` (a harmless stand-in for an attack)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('ran')",))


@pytest.fixture
def fake_detectron2(monkeypatch):
    """A stand-in for detectron2 (not installed here) that loads weights as detectron2 does:
    ``DefaultPredictor`` loads ``cfg.MODEL.WEIGHTS`` through ``DetectionCheckpointer``, whose
    ``_load_file`` reads a ``.pkl`` with ``pickle.load`` and whose ``load`` turns the arrays
    of ``data["model"]`` into the model's state."""
    import pickle
    import types
    from types import SimpleNamespace

    class DetectionCheckpointer:
        def __init__(self, model):
            self.model = model

        def load(self, path):
            if not path:
                return {}
            data = self._load_file(path)
            state = {k: torch.as_tensor(v) for k, v in data.pop("model").items()}
            self.model.load_state_dict(state)
            return data

        def _load_file(self, filename):
            with open(filename, "rb") as f:
                return pickle.load(f, encoding="latin1")

    class DefaultPredictor:
        def __init__(self, cfg):
            self.cfg = cfg
            self.model = torch.nn.Linear(2, 2)
            DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)

    def get_cfg():
        cfg = SimpleNamespace(
            MODEL=SimpleNamespace(
                WEIGHTS="", DEVICE="cpu", ROI_HEADS=SimpleNamespace(SCORE_THRESH_TEST=0.5)
            )
        )
        cfg.merge_from_file = lambda path: None
        return cfg

    mods = {
        "detectron2": types.ModuleType("detectron2"),
        "detectron2.model_zoo": types.ModuleType("detectron2.model_zoo"),
        "detectron2.config": types.ModuleType("detectron2.config"),
        "detectron2.engine": types.ModuleType("detectron2.engine"),
        "detectron2.checkpoint": types.ModuleType("detectron2.checkpoint"),
    }
    mods["detectron2.model_zoo"].get_config_file = lambda name: name
    mods["detectron2.model_zoo"].get_checkpoint_url = lambda name: "https://x/model_final.pkl"
    mods["detectron2.config"].get_cfg = get_cfg
    mods["detectron2.engine"].DefaultPredictor = DefaultPredictor
    mods["detectron2.checkpoint"].DetectionCheckpointer = DetectionCheckpointer
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
        if "." in name:
            setattr(mods["detectron2"], name.split(".")[1], mod)


def _zoo_pkl(path, weight, protocol=2):
    import pickle

    data = {
        "model": {"weight": np.full((2, 2), weight, np.float32), "bias": np.arange(2.0)},
        "__author__": "Detectron2 Model Zoo",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


def test_detectron2_weights_load_without_pickle_and_are_hash_checked(tmp_path, fake_detectron2):
    from nsff_core.priors import weights as W
    from nsff_core.priors.maskrcnn import load_detectron2

    pkl = _zoo_pkl(tmp_path / "cache" / "model_final_f10217.pkl", 3.0)
    predictor = load_detectron2(pkl, "cpu")
    assert torch.equal(predictor.model.weight.detach(), torch.full((2, 2), 3.0))
    assert predictor.cfg.MODEL.WEIGHTS == str(pkl)
    assert W.read_record(pkl.parent)["model_final_f10217.pkl"]["entry"] == "detectron2_r50_fpn_3x"
    _zoo_pkl(pkl, 4.0)  # another file under the recorded name: before, loaded unchecked
    with pytest.raises(W.WeightsMismatch, match="model_final_f10217.pkl") as info:
        load_detectron2(pkl, "cpu", scene="s")
    assert info.value.stage == "masks" and "scene 's'" in str(info.value)


def test_a_detectron2_pkl_that_runs_code_is_refused(tmp_path, fake_detectron2):
    """Before: detectron2's pickle.load ran the file's code while loading the weights."""
    import pickle

    from nsff_core.priors.maskrcnn import load_detectron2

    ran = tmp_path / "ran.txt"
    pkl = tmp_path / "cache" / "model_final_f10217.pkl"
    pkl.parent.mkdir()
    payload = {"model": {"weight": _RunsCode(ran)}, "__author__": "Detectron2 Model Zoo"}
    pkl.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(StageError, match=r"builtin\w*\.exec") as info:
        load_detectron2(pkl, "cpu", scene="s")
    assert not ran.exists()
    assert "not a detectron2 checkpoint of arrays" in str(info.value)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickled_arrays_load_without_running_code(tmp_path, protocol):
    import collections
    import io
    import pickle

    from nsff_core.priors.pretrained import load_pickled_arrays

    data = {
        "model": collections.OrderedDict(
            a=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.array([1, 2], np.int64)
        ),
        "__author__": "x",
        "n": np.float32(1.5),
        "t": (1, "two", b"three", None, True, 2.5),
    }
    out = load_pickled_arrays(io.BytesIO(pickle.dumps(data, protocol=protocol)))
    assert list(out["model"]) == ["a", "b"] and out["t"] == data["t"] and out["n"] == 1.5
    assert (
        np.array_equal(out["model"]["a"], data["model"]["a"]) and out["model"]["a"].flags.writeable
    )
    ran = tmp_path / "ran.txt"
    for evil in (_RunsCode(ran), {"x": [_RunsCode(ran)]}):
        with pytest.raises(pickle.UnpicklingError, match=r"builtin\w*\.exec"):
            load_pickled_arrays(io.BytesIO(pickle.dumps(evil, protocol=protocol)))
    assert not ran.exists()


def test_pickled_arrays_allow_only_the_latin1_codec():
    import io
    import pickle

    from nsff_core.priors.pretrained import load_pickled_arrays

    # protocol 2 stores bytes as _codecs.encode(text, "latin1"); another codec is refused
    ok = pickle.dumps(b"\xff\x00", protocol=2)
    assert load_pickled_arrays(io.BytesIO(ok)) == b"\xff\x00"
    bad = ok.replace(b"latin1", b"rot_13")
    with pytest.raises(pickle.UnpicklingError, match="codec"):
        load_pickled_arrays(io.BytesIO(bad))
