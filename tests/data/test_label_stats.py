"""Object coverage statistics and the EM-Adapt portion they suggest."""

import numpy as np

from kseg.data import label_stats


def test_coverage_by_hand():
    a = np.zeros((4, 5), np.uint8)  # 20 pixels: 4 void, 16 valid
    a[0, :4] = 255
    a[1, :4] = 1  # 4 of 16 -> 25%
    a[2, :2] = 3  # 2 of 16 -> 12.5%
    b = np.full((2, 2), 2, np.uint8)  # all class 2: no background
    empty = np.full((3, 3), 255, np.uint8)  # no valid pixel: skipped
    stats = label_stats.coverage([a, b, empty], num_classes=4)
    np.testing.assert_allclose(stats["background"], [10 / 16, 0.0])
    np.testing.assert_allclose(sorted(stats["objects"]), [0.125, 0.25, 1.0])
    np.testing.assert_allclose(stats["foreground"], [6 / 16, 1.0])
    np.testing.assert_array_equal(stats["classes_per_image"], [2, 1])


def test_suggested_portion_is_the_median_rounded_down():
    stats = {"objects": np.array([0.04, 0.09, 0.116, 0.2, 0.3])}
    assert label_stats.suggest_fg_portion(stats) == 0.1  # median 11.6% -> 10%
    assert label_stats.suggest_fg_portion({"objects": np.array([0.01])}) == 0.05  # floor
    assert label_stats.suggest_fg_portion(stats, quantile=1.0) == 0.3
