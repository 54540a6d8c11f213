"""Proposals from a batch clustering: merges, splits and moves, stable and region-bounded."""

from __future__ import annotations

import uuid

import numpy as np
from numpy.typing import NDArray

from clusterer.recluster import Current, Item, propose

LINKAGE = 0.4


def kinds(n_kinds: int, per_kind: int, seed: int = 1) -> tuple[NDArray[np.float32], list[int]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_kinds, 32))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = [k for k in range(n_kinds) for _ in range(per_kind)]
    vectors = centres[labels] + rng.normal(scale=0.4 / np.sqrt(32), size=(len(labels), 32))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), labels


def current(
    assign: list[int], confirmed: frozenset[int] = frozenset()
) -> tuple[list[Item], dict[uuid.UUID, Current]]:
    ids = {c: uuid.UUID(int=1000 + c) for c in set(assign)}
    items = [Item(uuid.UUID(int=i + 1), ids[c]) for i, c in enumerate(assign)]
    clusters = {ids[c]: Current(ids[c], c not in confirmed, assign.count(c)) for c in set(assign)}
    return items, clusters


def test_halves_of_a_kind_merge_and_a_mixed_cluster_splits() -> None:
    vectors, _ = kinds(3, 6)
    # Kind 0 in clusters 0 and 1 (halves); kinds 1 and 2 together in cluster 2.
    items, clusters = current([0, 0, 0, 1, 1, 1] + [2] * 12)
    result = propose(items, vectors, clusters, LINKAGE, 1000)
    assert sorted(p.kind for p in result.proposals) == ["merge", "split"], result.proposals
    merge = next(p for p in result.proposals if p.kind == "merge")
    assert set(merge.cluster_ids) == {uuid.UUID(int=1000), uuid.UUID(int=1001)}
    assert merge.gain > 0 and merge.automatic and "linkage threshold" in merge.reason
    split = next(p for p in result.proposals if p.kind == "split")
    assert split.plan["cluster"] == str(uuid.UUID(int=1002)) and split.gain > 0
    part = {uuid.UUID(m) for m in split.plan["part"]}
    kind_1 = {items[i].content_id for i in range(6, 12)}
    kind_2 = {items[i].content_id for i in range(12, 18)}
    assert part in (kind_1, kind_2)


def test_a_member_filed_with_another_kind_moves_to_its_own() -> None:
    vectors, _ = kinds(2, 6)
    # Cluster 0: kind 0 and one member of kind 1; cluster 1: the rest of kind 1.
    items, clusters = current([0] * 6 + [0] + [1] * 5)
    [move] = propose(items, vectors, clusters, LINKAGE, 1000).proposals
    assert move.kind == "move" and move.gain > 0
    assert move.plan == {
        "from": str(uuid.UUID(int=1000)),
        "to": str(uuid.UUID(int=1001)),
        "members": [str(items[6].content_id)],
    }


def test_clusters_that_match_the_groups_get_nothing_and_prints_are_stable() -> None:
    vectors, labels = kinds(4, 5)
    items, clusters = current(labels)
    assert propose(items, vectors, clusters, LINKAGE, 1000).proposals == []
    singles, alone = current(list(range(20)))
    first = propose(singles, vectors, alone, LINKAGE, 1000).proposals
    again = propose(singles, vectors, alone, LINKAGE, 1000).proposals
    assert [p.fingerprint for p in first] == [p.fingerprint for p in again]
    assert len(first) == 4 and all(p.kind == "merge" for p in first)


def test_a_confirmed_cluster_is_never_merged_automatically() -> None:
    vectors, _ = kinds(1, 4)
    items, clusters = current([0, 1, 2, 3], confirmed=frozenset({2}))
    [merge] = propose(items, vectors, clusters, LINKAGE, 1000).proposals
    assert not merge.automatic
    assert merge.plan["target"] == str(uuid.UUID(int=1002))  # the confirmed one gathers


def test_regions_bound_the_work_and_still_find_the_merges() -> None:
    vectors, labels = kinds(6, 20, seed=3)
    items, clusters = current(list(range(120)))
    result = propose(items, vectors, clusters, LINKAGE, 40)
    assert result.regions > 1
    merged = [set(p.cluster_ids) for p in result.proposals if p.kind == "merge"]
    ids = [i.cluster_id for i in items]
    # Every merge joins one kind only.
    for group in merged:
        assert len({labels[ids.index(c)] for c in group}) == 1
    assert sum(len(g) for g in merged) >= 100
