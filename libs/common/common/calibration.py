"""Joining thresholds from the data: what a model's own embeddings say "alike" means.

The clusterer calibrates each model from a random sample of its embeddings (near-duplicates
left out: a re-encoded copy says nothing about how alike two different photos of a kind are),
and the gateway shows the thresholds that follow; both use this module. No I/O.

Two statistics of the sample:

- `nearest`, the median over items of the cosine to their nearest other item: how alike a
  typical item and its closest relative are;
- `background`, the mean cosine of all pairs: how alike two items picked at random are.

A newcomer joins a cluster of m members when its cosine to the cluster's centroid reaches

    t(m) = W * c(nearest, m) + (1 - W) * c(background, m),
    c(r, m) = r * sqrt(m) / sqrt(1 + (m - 1) * r)

where c(r, m) is the cosine between one item and the mean of m others when every pair of them
is r alike: a relative's cosine to a cluster of relatives grows with the cluster, and so does a
stranger's (every vector shares some common direction), so the bar rises with the cluster's
size instead of letting large clusters swallow everything. W (0.6) sits the bar a little
nearer the relatives than halfway. The manifest's threshold (or CLUSTER_THRESHOLD's default)
is a weak prior worth PRIOR_WEIGHT items: with n items, (w * prior + n * t(m)) / (w + n); at 40
items it weighs 2.4 %. CLUSTER_THRESHOLD set explicitly is the threshold, flat, for every
size; an admin's per-cluster threshold wins over all of it.

The linkage for re-clustering (average cosine between two groups above which they belong
together) is a third of the way from `background` to `nearest`. W, the linkage fraction and
the prior weight were chosen on the tune half of the evaluation photos
(bench/cluster_quality.py) and are judged on the held-out half.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

# The prior is worth this many items of data.
PRIOR_WEIGHT = 1.0
# Below this many items there is no distribution to speak of: the prior alone.
MIN_ITEMS = 3
# Where the bar sits between a stranger's cosine to a cluster (0) and a relative's (1).
RELATIVE_WEIGHT = 0.6
# How far from the background towards the nearest-neighbour median the linkage sits.
LINKAGE_FRACTION = 1 / 3
# Thresholds never leave this range (the table allows (0, 1]).
FLOOR, CEILING = 0.01, 0.999


def group_cosine(rho: float, m: int) -> float:
    """The cosine between one item and the mean of m others when every pair is rho alike."""
    rho = min(max(rho, 1e-6), 1.0)
    return rho * math.sqrt(m) / math.sqrt(1 + (m - 1) * rho)


@dataclass(frozen=True)
class Calibration:
    """A model's calibration (stored in models.calibration) and the thresholds it gives."""

    items: int  # items the model holds (near-duplicates left out)
    sampled: int
    nearest: float | None  # median nearest-neighbour cosine in the sample
    background: float | None  # mean cosine of all pairs in the sample
    prior: float
    override: float | None  # CLUSTER_THRESHOLD, when set explicitly
    linkage: float  # average cosine above which groups belong together (re-clustering)

    @property
    def source(self) -> str:
        """ "override" (CLUSTER_THRESHOLD), "prior" (too few items) or "data"."""
        if self.override is not None:
            return "override"
        return "prior" if self.nearest is None else "data"

    def threshold_for(self, members: int) -> float:
        """The cosine a newcomer needs to join a cluster of `members` (without its own)."""
        if self.override is not None:
            return self.override
        if self.nearest is None or self.background is None:
            return self.prior
        m = max(members, 1)
        data = RELATIVE_WEIGHT * group_cosine(self.nearest, m) + (
            1 - RELATIVE_WEIGHT
        ) * group_cosine(self.background, m)
        n = max(self.items, self.sampled)
        blended = (PRIOR_WEIGHT * self.prior + n * data) / (PRIOR_WEIGHT + n)
        return min(max(blended, FLOOR), CEILING)

    def as_json(self) -> dict[str, Any]:
        values = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        return {**values, "source": self.source, "threshold_1": round(self.threshold_for(1), 6)}

    @classmethod
    def flat(cls, threshold: float) -> Calibration:
        """The same threshold for every cluster, as CLUSTER_THRESHOLD set explicitly gives."""
        return cls(0, 0, None, None, threshold, threshold, threshold)

    @classmethod
    def from_json(cls, stored: dict[str, Any]) -> Calibration:
        return cls(**{k: stored.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]


def calibrate(
    sample: NDArray[np.float32], items: int, prior: float, override: float | None = None
) -> Calibration:
    """The calibration of a model holding `items` items, from a random `sample` (unit rows)."""
    n = len(sample)
    if n < MIN_ITEMS:
        flat = override if override is not None else prior
        return Calibration(items, n, None, None, prior, override, flat)
    sims = sample.astype(np.float64) @ sample.T.astype(np.float64)
    background = float(np.mean(sims[np.triu_indices(n, k=1)]))
    np.fill_diagonal(sims, -np.inf)
    nearest = float(np.median(sims.max(axis=1)))
    linkage = min(background + (nearest - background) * LINKAGE_FRACTION, CEILING)
    return Calibration(items, n, nearest, background, prior, override, linkage)


def due(items_now: int, items_then: int | None) -> bool:
    """Whether the model changed enough since its last calibration to calibrate again: every
    new item while it is small, every 5 % once it is large, and after any loss."""
    if items_then is None:
        return True
    return items_now >= items_then + max(1, items_then // 20) or items_now < items_then


def joining_threshold(
    own: float | None, stored: dict[str, Any] | None, members: int
) -> float | None:
    """A cluster's threshold: its own (an admin's), else its model's for its size."""
    if own is not None:
        return float(own)
    if stored is None:
        return None
    return Calibration.from_json(stored).threshold_for(members)
