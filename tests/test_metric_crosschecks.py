"""The AP cross-checks must run where the project is tested, not skip.

``test_coco_metrics`` holds COCO AP50 / AP50:95 (pycocotools, the ``metrics`` extra) to an independent
NumPy oracle within 0.001 on random sets, and ``test_metrics`` holds the average precision to
scikit-learn's. Both skip where their library is missing; in CI (``CI`` set, the ``dev`` extra
installed) a missing library is a failure here, so a cross-check cannot silently stop running.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
from fusionedge.sdk.metrics import detection_map50
from fusionedge.sdk.postprocess import Detection

CROSS_CHECKS = {"pycocotools": "metrics", "sklearn": "dev"}


@pytest.mark.parametrize("module", sorted(CROSS_CHECKS))
def test_the_cross_check_libraries_are_installed_in_ci(module: str) -> None:
    if not os.environ.get("CI"):
        pytest.skip("CI is not set: only CI must run every cross-check")
    assert importlib.util.find_spec(module) is not None, (
        f"{module} is missing: its AP cross-check skips; install fusionedge[{CROSS_CHECKS[module]}]"
    )


def test_voc_all_point_ap_is_not_the_11_point_one() -> None:
    """One class, two boxes found at ranks 1 and 3 of 3: all-point AP = 1/2 * 1 + 1/2 * 2/3 = 5/6;
    VOC2007's 11-point AP would be (6 * 1 + 5 * 2/3) / 11 = 0.8485."""
    gt = [[("car", 0, 0, 10, 10), ("car", 20, 20, 30, 30)]]
    preds = [[Detection("car", 0.9, 0, 0, 10, 10), Detection("car", 0.8, 50, 50, 60, 60),
              Detection("car", 0.7, 20, 20, 30, 30)]]
    assert detection_map50(preds, gt, ["car"]) == pytest.approx(5 / 6)
