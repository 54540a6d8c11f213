"""Re-clustering: a batch clustering of one model's items, compared with the clusters they are
in, as proposals (merge, split, move). No I/O; clusterer/reclustering.py runs it.

The batch clustering is scikit-learn's average-linkage AgglomerativeClustering on cosine
distance, cut where the average similarity between two groups falls below the model's
calibrated linkage threshold (clusterer/calibration.py). It needs the items' full distance
matrix, so it works on regions of at most `max_items` items: with more, the current clusters'
centroids are split into regions by k-means (weighted by their member counts) and each
cluster's members go to its centroid's region whole, so no current cluster is cut by a region
boundary; a region still too large is clustered on a random sample of `max_items` items and
the rest join the group whose mean is nearest. Merges across regions are not proposed.

From the groups: each current cluster's *home* is the group holding most of its members.
Clusters sharing a home are proposed for a merge (into the largest, confirmed first); members
whose group is another cluster's home are proposed to move there; members whose group is no
cluster's home, two or more of them, are proposed to be split off as a new cluster.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.cluster import AgglomerativeClustering, KMeans

SEED = 15


@dataclass(frozen=True)
class Item:
    content_id: uuid.UUID
    cluster_id: uuid.UUID


@dataclass(frozen=True)
class Current:
    """A current cluster as the comparison needs it."""

    cluster_id: uuid.UUID
    provisional: bool
    member_count: int


@dataclass(frozen=True)
class Proposal:
    kind: str  # merge | split | move
    cluster_ids: tuple[uuid.UUID, ...]
    plan: dict[str, Any]
    reason: str
    gain: float
    members: tuple[uuid.UUID, ...] = field(default=())

    @property
    def fingerprint(self) -> str:
        """The change itself (kind, clusters, members): the same change, the same print."""
        parts = [self.kind, *sorted(str(c) for c in self.cluster_ids), "|"]
        parts += sorted(str(m) for m in self.members)
        return hashlib.sha256(" ".join(parts).encode()).hexdigest()

    @property
    def automatic(self) -> bool:
        """Whether CLUSTER_AUTO_MERGE may carry it out: a merge of provisional clusters."""
        return self.kind == "merge" and bool(self.plan.get("provisional_only"))


@dataclass(frozen=True)
class Result:
    proposals: list[Proposal]
    regions: int


def groups(
    items: Sequence[Item],
    vectors: NDArray[np.float32],
    linkage: float,
    max_items: int,
) -> tuple[NDArray[np.int64], int]:
    """A group label per item (unique across regions) and the number of regions."""
    n = len(items)
    labels = np.zeros(n, dtype=np.int64)
    if n < 2:
        return labels, 1
    regions = _regions(items, vectors, max_items)
    rng = np.random.default_rng(SEED)
    offset = 0
    for members in regions:
        found = _cluster_region(vectors[members], linkage, max_items, rng)
        labels[members] = found + offset
        offset += int(found.max()) + 1
    return labels, len(regions)


def _regions(
    items: Sequence[Item], vectors: NDArray[np.float32], max_items: int
) -> list[NDArray[np.int64]]:
    """Item indices per region; whole clusters per region."""
    n = len(items)
    if n <= max_items:
        return [np.arange(n)]
    by_cluster: dict[uuid.UUID, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_cluster[item.cluster_id].append(i)
    ids = sorted(by_cluster)
    sums = np.stack([vectors[by_cluster[c]].sum(axis=0) for c in ids])
    centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    count = min(math.ceil(2 * n / max_items), len(ids))
    weights = np.array([len(by_cluster[c]) for c in ids], dtype=np.float64)
    which = KMeans(count, random_state=SEED, n_init=1).fit_predict(centroids, sample_weight=weights)
    regions = []
    for r in range(count):
        members = [i for c, w in zip(ids, which, strict=True) if w == r for i in by_cluster[c]]
        if members:
            regions.append(np.array(sorted(members), dtype=np.int64))
    return regions


def _cluster_region(
    vectors: NDArray[np.float32], linkage: float, max_items: int, rng: np.random.Generator
) -> NDArray[np.int64]:
    n = len(vectors)
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    sampled = np.sort(rng.choice(n, max_items, replace=False)) if n > max_items else np.arange(n)
    model = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", distance_threshold=1.0 - linkage
    )
    found: NDArray[np.int64] = np.asarray(model.fit_predict(vectors[sampled]), dtype=np.int64)
    if len(sampled) == n:
        return found
    # The rest join the group whose mean direction is nearest.
    sums = np.zeros((int(found.max()) + 1, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, found, vectors[sampled])
    means = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    labels = np.empty(n, dtype=np.int64)
    labels[sampled] = found
    rest = np.setdiff1d(np.arange(n), sampled)
    for start in range(0, len(rest), 4096):
        chunk = rest[start : start + 4096]
        labels[chunk] = np.argmax(vectors[chunk] @ means.T, axis=1)
    return labels


def propose(
    items: Sequence[Item],
    vectors: NDArray[np.float32],
    clusters: dict[uuid.UUID, Current],
    linkage: float,
    max_items: int,
) -> Result:
    """The proposals that would bring the current clusters to the batch clustering's groups."""
    labels, regions = groups(items, vectors, linkage, max_items)
    members: dict[uuid.UUID, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        members[item.cluster_id].append(i)
    home: dict[uuid.UUID, int] = {}
    for cluster_id, indices in members.items():
        counts = Counter(int(labels[i]) for i in indices)
        top = max(counts.values())
        home[cluster_id] = min(g for g, c in counts.items() if c == top)
    homes: dict[int, list[uuid.UUID]] = defaultdict(list)
    for cluster_id, g in home.items():
        homes[g].append(cluster_id)
    # The cluster a group's items gather in: confirmed first, then the largest, then by id.
    gather = {
        g: min(
            ids,
            key=lambda c: (clusters[c].provisional, -len(members[c]), str(c)),
        )
        for g, ids in homes.items()
    }
    sums = {c: vectors[idx].sum(axis=0, dtype=np.float64) for c, idx in members.items()}
    proposals: list[Proposal] = []
    for g, ids in sorted(homes.items()):
        if len(ids) > 1:
            proposals.append(_merge(gather[g], ids, clusters, members, sums, linkage))
    for cluster_id in sorted(members):
        strays: dict[int, list[int]] = defaultdict(list)
        for i in members[cluster_id]:
            if int(labels[i]) != home[cluster_id]:
                strays[int(labels[i])].append(i)
        for g, indices in sorted(strays.items()):
            if g in gather:
                target = gather[g]
                if target != cluster_id:
                    proposals.append(
                        _move(cluster_id, target, indices, items, vectors, members, sums)
                    )
            elif len(indices) >= 2:
                proposals.append(
                    _split(cluster_id, indices, items, vectors, members, sums, linkage)
                )
    return Result(proposals, regions)


def _avg_between(a: NDArray[np.float64], na: int, b: NDArray[np.float64], nb: int) -> float:
    """The average cosine between the members of two groups of unit vectors, from their sums."""
    return float(a @ b) / (na * nb)


def _merge(
    target: uuid.UUID,
    ids: list[uuid.UUID],
    clusters: dict[uuid.UUID, Current],
    members: dict[uuid.UUID, list[int]],
    sums: dict[uuid.UUID, NDArray[np.float64]],
    linkage: float,
) -> Proposal:
    sources = sorted((c for c in ids if c != target), key=str)
    total = sum((sums[c] for c in ids), np.zeros_like(sums[target]))
    n = sum(len(members[c]) for c in ids)
    # Pairs of members from different clusters: all pairs less the pairs within each.
    within = sum(float(sums[c] @ sums[c]) for c in ids)
    cross_pairs = n * n - sum(len(members[c]) ** 2 for c in ids)
    similarity = (float(total @ total) - within) / cross_pairs
    provisional_only = all(clusters[c].provisional for c in ids)
    return Proposal(
        "merge",
        tuple(sorted(ids, key=str)),
        {
            "target": str(target),
            "sources": [str(s) for s in sources],
            "provisional_only": provisional_only,
        },
        f"the members of these {len(ids)} clusters ({n} items) are on average"
        f" {similarity:.3f} alike, above the linkage threshold {linkage:.3f}",
        similarity - linkage,
    )


def _move(
    source: uuid.UUID,
    target: uuid.UUID,
    indices: list[int],
    items: Sequence[Item],
    vectors: NDArray[np.float32],
    members: dict[uuid.UUID, list[int]],
    sums: dict[uuid.UUID, NDArray[np.float64]],
) -> Proposal:
    moving = vectors[indices].sum(axis=0, dtype=np.float64)
    k = len(indices)
    rest = len(members[source]) - k
    to_target = _avg_between(moving, k, sums[target], len(members[target]))
    to_own = _avg_between(moving, k, sums[source] - moving, rest) if rest else 0.0
    ids = tuple(items[i].content_id for i in indices)
    return Proposal(
        "move",
        tuple(sorted((source, target), key=str)),
        {"from": str(source), "to": str(target), "members": [str(m) for m in ids]},
        f"{k} member(s) are on average {to_target:.3f} alike to the members of the other"
        f" cluster and {to_own:.3f} to the rest of their own",
        to_target - to_own,
        ids,
    )


def _split(
    cluster_id: uuid.UUID,
    indices: list[int],
    items: Sequence[Item],
    vectors: NDArray[np.float32],
    members: dict[uuid.UUID, list[int]],
    sums: dict[uuid.UUID, NDArray[np.float64]],
    linkage: float,
) -> Proposal:
    part = vectors[indices].sum(axis=0, dtype=np.float64)
    k = len(indices)
    rest = len(members[cluster_id]) - k
    between = _avg_between(part, k, sums[cluster_id] - part, rest)
    within = (float(part @ part) - k) / (k * (k - 1))
    ids = tuple(items[i].content_id for i in indices)
    return Proposal(
        "split",
        (cluster_id,),
        {"cluster": str(cluster_id), "part": [str(m) for m in ids]},
        f"{k} members are on average {within:.3f} alike among themselves and {between:.3f}"
        f" to the rest of the cluster, below the linkage threshold {linkage:.3f}",
        linkage - between,
        ids,
    )
