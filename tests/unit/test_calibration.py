"""The self-calibrated joining threshold moves with the data, and the prior soon stops mattering."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from common.calibration import Calibration, calibrate, due, group_cosine, joining_threshold


def kinds(
    n_kinds: int, per_kind: int, spread: float, dim: int = 64, seed: int = 0
) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_kinds, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = np.repeat(centres, per_kind, axis=0) + rng.normal(
        scale=spread / np.sqrt(dim), size=(n_kinds * per_kind, dim)
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def test_tight_clusters_raise_the_threshold_and_loose_ones_lower_it() -> None:
    tight = calibrate(kinds(5, 10, spread=0.3), 50, prior=0.72)
    loose = calibrate(kinds(5, 10, spread=1.5), 50, prior=0.72)
    assert tight.source == loose.source == "data"
    for m in (1, 5, 20):
        assert tight.threshold_for(m) > loose.threshold_for(m) + 0.1
    # Either way the bar sits between a stranger's and a relative's cosine to a cluster.
    for found in (tight, loose):
        assert found.nearest is not None and found.background is not None
        for m in (1, 5, 20):
            stranger, relative = group_cosine(found.background, m), group_cosine(found.nearest, m)
            assert stranger < found.threshold_for(m) < relative


def test_the_bar_rises_with_the_size_of_the_cluster() -> None:
    found = calibrate(kinds(4, 10, spread=1.0), 40, prior=0.72)
    bars = [found.threshold_for(m) for m in (1, 2, 5, 10, 50)]
    assert bars == sorted(bars) and bars[-1] > bars[0] + 0.05


def test_forty_items_are_decided_by_their_data_not_the_prior() -> None:
    sample = kinds(6, 7, spread=1.0)
    low, high = calibrate(sample, 42, prior=0.2), calibrate(sample, 42, prior=0.95)
    assert abs(high.threshold_for(1) - low.threshold_for(1)) < 0.02


def test_too_few_items_use_the_prior_and_an_override_is_flat() -> None:
    few = calibrate(kinds(1, 2, spread=0.5), 2, prior=0.8)
    assert few.source == "prior" and few.threshold_for(1) == few.threshold_for(9) == 0.8
    forced = calibrate(kinds(3, 10, spread=1.0), 30, prior=0.8, override=0.5)
    assert forced.source == "override"
    assert forced.threshold_for(1) == forced.threshold_for(30) == 0.5
    assert Calibration.flat(0.6).threshold_for(7) == 0.6


def test_a_stored_calibration_reads_back_the_same() -> None:
    found = calibrate(kinds(3, 8, spread=0.8), 24, prior=0.72)
    again = Calibration.from_json(found.as_json())
    assert again.threshold_for(4) == pytest.approx(found.threshold_for(4), abs=1e-5)
    # An admin's own threshold wins; without a calibration there is none to show.
    assert joining_threshold(0.33, found.as_json(), 4) == 0.33
    assert joining_threshold(None, found.as_json(), 4) == pytest.approx(
        found.threshold_for(4), abs=1e-5
    )
    assert joining_threshold(None, None, 4) is None


def test_calibration_is_due_as_the_model_grows_or_shrinks() -> None:
    assert due(1, None)
    assert due(11, 10) and not due(10, 10)
    assert not due(1040, 1000) and due(1050, 1000)
    assert due(999, 1000)
