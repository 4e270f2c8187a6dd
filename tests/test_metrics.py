import numpy as np
import pytest

from nsff_core.model.metrics import end_point_error, iou, spearman


def test_end_point_error_hand_case():
    gt = np.zeros((2, 2, 2))
    est = np.zeros((2, 2, 2))
    est[0, 0] = (3.0, 4.0)  # error 5 at one of four pixels
    assert end_point_error(est, gt) == 1.25
    valid = np.array([[True, False], [False, False]])
    assert end_point_error(est, gt, valid) == 5.0


def test_iou_hand_case():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b[:2, 1:3] = True  # 4 pixels, 2 shared
    assert iou(a, b) == 2 / 6
    assert iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def test_spearman_is_rank_based():
    x = np.linspace(1, 10, 50)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    valid = np.zeros(50, bool)
    valid[:10] = True
    assert spearman(x, np.r_[x[:10], -x[10:]], valid) == pytest.approx(1.0)
    assert spearman(x, np.r_[x[:10], -x[10:]]) < 0
