import math

import numpy as np
import pytest

from mobilekd.errors import MobileKDError
from mobilekd.metrics import retrieval_metrics


def unit(degrees):
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def test_recall_and_map_at_r_hand_computed():
    # angles and labels; neighbours by angular distance (worked out by hand):
    # q0 -> e1(+) e3 ...   q1 -> e0(+) e3 ...   q2 -> e4 e3 e1(+)   q3 -> e1 e0 e2 e4(+)   q4 -> e2 e3(+)
    embeddings = unit([0, 12, 100, 25, 115])
    labels = np.array([0, 0, 0, 1, 1])
    result = retrieval_metrics(embeddings, labels)
    assert result["R@1"] == pytest.approx(40.0)
    assert result["R@2"] == pytest.approx(60.0)
    assert result["R@4"] == pytest.approx(100.0)
    assert result["MAP@R"] == pytest.approx(100 * (0.5 + 0.5) / 5)
    assert result["R-Precision"] == pytest.approx(100 * (0.5 + 0.5) / 5)


def test_map_at_r_counts_precision_at_each_hit():
    query, query_labels = unit([0]), np.array([0])
    gallery = unit([5, 10, 15, 20, 90])
    gallery_labels = np.array([0, 1, 0, 1, 0])  # R = 3; top 3 = hit, miss, hit
    result = retrieval_metrics(query, query_labels, gallery, gallery_labels, leave_one_out=False)
    assert result["MAP@R"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert result["R-Precision"] == pytest.approx(100 * 2 / 3)
    assert result["R@1"] == 100.0


def test_asymmetric_with_identical_gallery_equals_symmetric():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(40, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    labels = rng.integers(0, 5, 40)
    assert retrieval_metrics(embeddings, labels, embeddings.copy(), labels) == retrieval_metrics(embeddings, labels)


def test_agrees_with_pytorch_metric_learning():
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(12), 6)
    embeddings = rng.normal(size=(len(labels), 16)).astype(np.float32) + 0.8 * rng.normal(size=(12, 16))[labels]
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    ours = retrieval_metrics(embeddings, labels)
    calculator = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
                                    k="max_bin_count", device=None)
    import torch

    theirs = calculator.get_accuracy(torch.from_numpy(embeddings), torch.from_numpy(labels))
    assert ours["R@1"] == pytest.approx(100 * theirs["precision_at_1"], abs=1e-4)
    assert ours["MAP@R"] == pytest.approx(100 * theirs["mean_average_precision_at_r"], abs=1e-4)
    assert ours["R-Precision"] == pytest.approx(100 * theirs["r_precision"], abs=1e-4)


def test_bad_embeddings():
    labels = np.array([0, 0, 1, 1])
    with pytest.raises(MobileKDError, match="NaN"):
        retrieval_metrics(np.full((4, 2), math.nan), labels)
    with pytest.raises(MobileKDError, match="query dim 2 != gallery dim 3"):
        retrieval_metrics(unit([0, 1, 2, 3]), labels, np.ones((4, 3), np.float32), labels)


def test_per_query_values_hand_computed_and_bootstrap_interval():
    """The per-query values behind the hand-computed example above, and the bootstrap interval of their mean:
    the same on every call, containing the mean, equal to a plain resample-by-resample loop."""
    from mobilekd.metrics import bootstrap_ci, per_query_metrics, summarize

    embeddings, labels = unit([0, 12, 100, 25, 115]), np.array([0, 0, 0, 1, 1])
    values = per_query_metrics(embeddings, labels)
    assert values["R@1"].tolist() == [True, True, False, False, False]
    assert values["MAP@R"].tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0, 0.0])
    assert values["index"].tolist() == [0, 1, 2, 3, 4]
    assert summarize(values) == retrieval_metrics(embeddings, labels)

    ci = bootstrap_ci(values, resamples=200, seed=7)
    assert ci == bootstrap_ci(values, resamples=200, seed=7)
    rng = np.random.default_rng(7)
    draws = rng.integers(0, 5, size=(200, 5))
    for name, mean in (("R@1", 40.0), ("MAP@R", 20.0)):
        resampled = 100.0 * np.array([values[name][d].astype(np.float64).mean() for d in draws])
        assert ci[name] == pytest.approx([np.percentile(resampled, 2.5), np.percentile(resampled, 97.5)])
        assert ci[name][0] <= mean <= ci[name][1] and ci[name][0] < ci[name][1]
