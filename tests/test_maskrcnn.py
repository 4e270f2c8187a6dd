"""Mask R-CNN masks backend: class filtering, the moving-instance filter, dilation, union, output
format. Random weights or a stand-in network only, nothing downloaded."""

import logging
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from nsff_core.errors import ConfigError, StageError  # noqa: E402
from nsff_core.model.io import frame_name, read_mask, write_mask  # noqa: E402
from nsff_core.priors.nets.maskrcnn import (  # noqa: E402
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
    with pytest.raises(StageError, match="2 frames but 3 motion masks"):
        write_mask(epi_dir / frame_name(2), np.zeros(out_hw, bool))
        compute_masks_maskrcnn(
            frames, tmp_path / "m2", out_hw, union_with=epi_dir, model=FakeMaskRCNN()
        )
    assert not (tmp_path / "m2").exists()


# --------------------------------------------------------------------------- moving instances

# training resolution of the moving-instance tests; the frames are twice as large
HW = (40, 60)


def _box(y0, y1, x0, x1, hw=HW):
    m = np.zeros(hw, bool)
    m[y0:y1, x0:x1] = True
    return m


# two people at training resolution: one walks (left), one sits still (right)
WALKER = _box(10, 30, 0, 15)
SITTER = _box(10, 30, 45, 60)


def _motion_masks(n=3):
    """Per frame: the walker's upper half moves (150 of its 300 pixels), and a mover outside
    the COCO classes touches the sitter's left edge (a dilated sitter would overlap it)."""
    m = _box(10, 20, 0, 15) | _box(12, 28, 40, 45)
    return [m.copy() for _ in range(n)]


class StubMaskRCNN(torch.nn.Module):
    """Stand-in with torchvision's detection interface that returns the given instances
    (bool masks at training resolution, scaled up to the image) on every image."""

    def __init__(self, instances):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.roi_heads = type("RoiHeads", (), {"score_thresh": 0.05})()
        self.instances = instances  # [(label, score, (H, W) bool at HW)]

    def forward(self, images):
        out = []
        for img in images:
            h, w = img.shape[-2:]
            masks = [
                np.kron(m, np.ones((h // m.shape[0], w // m.shape[1])))
                for _, _, m in self.instances
            ]
            out.append(
                {
                    "labels": torch.tensor([lab for lab, _, _ in self.instances]),
                    "scores": torch.tensor([s for _, s, _ in self.instances]),
                    "masks": torch.from_numpy(np.stack(masks)[:, None].astype(np.float32)),
                    "boxes": torch.zeros(len(self.instances), 4),
                }
            )
        return out


def _people():
    return StubMaskRCNN([(PERSON, 0.9, WALKER), (PERSON, 0.8, SITTER)])


def _frames(n=3):
    return [np.full((2 * HW[0], 2 * HW[1], 3), 10 * i, np.uint8) for i in range(n)]


def _written(folder, n=3):
    return [read_mask(folder / frame_name(i)) for i in range(n)]


def test_a_still_person_is_dropped_and_a_moving_one_kept(tmp_path, caplog):
    """Before: every person was masked, the seated one too (and no motion argument existed)."""
    caplog.set_level(logging.INFO, logger="nsff_core.priors.nets.maskrcnn")
    summary = compute_masks_maskrcnn(
        _frames(),
        tmp_path / "masks",
        HW,
        classes=["people"],
        dilate_px=2,
        model=_people(),
        batch_size=2,
        motion=_motion_masks(),
        min_moving_fraction=0.25,
    )
    for got in _written(tmp_path / "masks"):
        # the walker is kept whole (not only its moving half), dilated; the sitter is dropped
        # although its dilated ring would overlap the other mover; no motion union asked
        np.testing.assert_array_equal(got, dilate(WALKER, 2))
    assert summary["instances_detected"] == {"person": 6}
    assert summary["instances_kept"] == {"person": 3}
    assert summary["instances_dropped_static"] == {"person": 3}
    assert summary["min_moving_fraction"] == 0.25 and summary["union_motion"] is False
    assert "kept 3 of 6 instance(s); dropped 3 as static" in caplog.text
    assert "fewer than 25% of their pixels moving): person 3" in caplog.text


@pytest.mark.parametrize("threshold, kept", [(0.5, True), (0.51, False)])
def test_the_moving_fraction_threshold_is_inclusive(tmp_path, threshold, kept):
    # half of the walker's pixels move: kept at 0.5, dropped above it
    summary = compute_masks_maskrcnn(
        _frames(1),
        tmp_path / "masks",
        HW,
        dilate_px=0,
        model=_people(),
        motion=_motion_masks(1),
        min_moving_fraction=threshold,
    )
    got = _written(tmp_path / "masks", 1)[0]
    np.testing.assert_array_equal(got, WALKER if kept else np.zeros(HW, bool))
    assert summary["instances_kept"] == ({"person": 1} if kept else {})


@pytest.mark.parametrize("motion_given", [True, False])
def test_fraction_zero_or_no_motion_keeps_every_instance(tmp_path, motion_given):
    summary = compute_masks_maskrcnn(
        _frames(),
        tmp_path / "masks",
        HW,
        dilate_px=1,
        model=_people(),
        motion=_motion_masks() if motion_given else None,
        min_moving_fraction=0.0 if motion_given else 0.9,
    )
    for got in _written(tmp_path / "masks"):
        np.testing.assert_array_equal(got, dilate(WALKER | SITTER, 1))
    assert summary["instances_kept"] == summary["instances_detected"] == {"person": 6}
    assert summary["instances_dropped_static"] == {}


def test_union_motion_adds_the_moving_pixels_outside_instances(tmp_path):
    motion = _motion_masks()
    motion[1] = motion[1] | _box(0, 3, 25, 30)  # another mover in frame 1 only
    summary = compute_masks_maskrcnn(
        _frames(),
        tmp_path / "masks",
        HW,
        dilate_px=2,
        model=_people(),
        motion=motion,
        min_moving_fraction=0.25,
        union_motion=True,
    )
    for i, got in enumerate(_written(tmp_path / "masks")):
        # instances dilated, the motion mask OR-ed in as it is (not dilated); the sitter's
        # own pixels stay unmasked
        np.testing.assert_array_equal(got, dilate(WALKER, 2) | motion[i])
        assert not got[SITTER & ~motion[i]].any()
    assert summary["union_motion"] is True and summary["mean_motion_fraction"] > 0


def test_motion_masks_from_a_folder_and_the_older_union_with(tmp_path):
    folder = tmp_path / "motion"
    folder.mkdir()
    for i, m in enumerate(_motion_masks()):
        write_mask(folder / frame_name(i), m)
    compute_masks_maskrcnn(
        _frames(), tmp_path / "a", HW, dilate_px=0, model=_people(), motion=folder,
        min_moving_fraction=0.25, union_motion=True,
    )  # fmt: skip
    for i, got in enumerate(_written(tmp_path / "a")):
        np.testing.assert_array_equal(got, WALKER | _motion_masks()[i])
    # union_with=X is motion=X with union_motion, without the filter
    compute_masks_maskrcnn(
        _frames(), tmp_path / "b", HW, dilate_px=0, model=_people(), union_with=folder
    )
    for i, got in enumerate(_written(tmp_path / "b")):
        np.testing.assert_array_equal(got, WALKER | SITTER | _motion_masks()[i])
    with pytest.raises(ValueError, match="not both"):
        compute_masks_maskrcnn(
            _frames(), tmp_path / "c", HW, model=_people(), union_with=folder, motion=folder
        )
    with pytest.raises(ValueError, match="needs the motion masks"):
        compute_masks_maskrcnn(_frames(), tmp_path / "c", HW, model=_people(), union_motion=True)


def _bad_motion(kind, tmp_path):
    if kind == "short list":
        return _motion_masks(2), "2 motion mask"
    if kind == "wrong size":
        return [
            np.zeros((20, 30), bool)
        ] * 3, "motion mask 0 is 30x20, the training resolution 60x40"
    folder = tmp_path / "motion"
    folder.mkdir()
    n = 4 if kind == "extra file" else 2
    for i in range(n):
        write_mask(folder / frame_name(i), np.zeros(HW, bool))
    return folder, ("3 frames but 4 motion masks" if n == 4 else "00002.png of frame 2 is missing")


@pytest.mark.parametrize("kind", ["short list", "wrong size", "missing file", "extra file"])
@pytest.mark.parametrize("union_motion", [False, True])
def test_bad_motion_masks_name_the_scene_and_the_rule(tmp_path, kind, union_motion):
    motion, cause = _bad_motion(kind, tmp_path)
    with pytest.raises(StageError, match=cause) as info:
        compute_masks_maskrcnn(
            _frames(), tmp_path / "masks", HW, model=_people(), scene="cafe", motion=motion,
            min_moving_fraction=0.0 if union_motion else 0.25, union_motion=union_motion,
        )  # fmt: skip
    err = info.value
    assert err.scene == "cafe" and err.stage == "masks"
    assert "scene 'cafe', rule 'masks'" in str(err) and "rerun the 'flow' and 'masks'" in str(err)
    assert "snakemake --forcerun flow results/cafe/masks" in str(err)
    assert not (tmp_path / "masks").exists()  # nothing half-written


def test_predict_instances_returns_each_instance(tmp_path):
    from nsff_core.priors.nets.maskrcnn import predict_instances, predict_masks

    ids = torchvision_label_ids(["people"])
    model = StubMaskRCNN([(PERSON, 0.9, WALKER), (CHAIR, 0.9, SITTER), (PERSON, 0.7, SITTER)])
    rgb = _frames(1)[0]
    [(masks, labels)] = predict_instances(model, [rgb], ids, 0.5)
    assert labels == [PERSON, PERSON] and masks.shape == (2, 80, 120) and masks.dtype == bool
    np.testing.assert_array_equal(masks[0][::2, ::2], WALKER)
    np.testing.assert_array_equal(masks[1][::2, ::2], SITTER)
    [(union, labels)] = predict_masks(model, [rgb], ids, 0.5)
    np.testing.assert_array_equal(union, masks.any(0))


def test_detectron2_backend_filters_static_instances(tmp_path):
    from types import SimpleNamespace

    def predictor(bgr):
        h, w = bgr.shape[:2]
        masks = np.stack([np.kron(m, np.ones((h // HW[0], w // HW[1]))) for m in (WALKER, SITTER)])
        inst = SimpleNamespace(
            pred_classes=torch.tensor([0, 0]),  # detectron2's person
            scores=torch.tensor([0.9, 0.9]),
            pred_masks=torch.from_numpy(masks > 0),
        )
        return {"instances": inst}

    predictor.cfg = SimpleNamespace(MODEL=SimpleNamespace(DEVICE="cpu"))
    summary = compute_masks_detectron2(
        _frames(), tmp_path / "masks", HW, dilate_px=0, predictor=predictor,
        motion=_motion_masks(), min_moving_fraction=0.25,
    )  # fmt: skip
    for got in _written(tmp_path / "masks"):
        np.testing.assert_array_equal(got, WALKER)
    assert summary["backend"] == "detectron2"
    assert summary["instances_dropped_static"] == {"person": 3}


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
    from nsff_core.priors.nets.maskrcnn import load_detectron2

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

    from nsff_core.priors.nets.maskrcnn import load_detectron2

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

    from nsff_core.priors.nets.pretrained import load_pickled_arrays

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

    from nsff_core.priors.nets.pretrained import load_pickled_arrays

    # protocol 2 stores bytes as _codecs.encode(text, "latin1"); another codec is refused
    ok = pickle.dumps(b"\xff\x00", protocol=2)
    assert load_pickled_arrays(io.BytesIO(ok)) == b"\xff\x00"
    bad = ok.replace(b"latin1", b"rot_13")
    with pytest.raises(pickle.UnpicklingError, match="codec"):
        load_pickled_arrays(io.BytesIO(bad))
