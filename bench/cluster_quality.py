#!/usr/bin/env python3
"""Clustering quality on real photos: today's online rule against HDBSCAN and agglomerative.

The set is mammoth_export/eval_photos.py's (51 photos of 7 kinds from registry archives,
built on the first run; a "tune" and a "test" split, two kinds only in "test"). Each model is
exported once into the cache (EfficientNet-Lite2 with its ImageNet weights; the random tiny
CLIP and the colour test model, whose numbers mean little), and every photo goes through the
embedder's own decoding and preprocessing (`decode_image`) and its `OnnxModel`.

The online rule is replayed in process, faithfully to the clusterer's `_assign`: photos come
in one by one (a fixed shuffled upload order); each is compared with every cluster's centroid
sum (the exact cosine the create path's look uses; with this few clusters the HNSW look finds
the same nearest ones), `clusterer.logic.choose` picks the most similar cluster that reaches
its threshold, a join adds the vector to that sum, and no pick opens a cluster holding the
photo. "calibrated" is today's rule (common/calibration.py: recalibrated on every photo from
the photos so far, a threshold per cluster size, the manifest's value a weak prior); "flat"
is the rule before it (the manifest `cluster_threshold`, else ClustererSettings' default).
"+ proposals accepted" runs the re-clustering (clusterer/recluster.propose, its calibrated
linkage) over the calibrated result and accepts every proposal. No database is needed.

Baselines on the same unit vectors: scikit-learn's HDBSCAN (min_cluster_size 2, Euclidean
distance on the unit vectors, which orders pairs as cosine does; noise counts as one
singleton cluster per photo) and AgglomerativeClustering (average linkage, cosine distance,
its distance threshold chosen on "tune" by ARI and applied unchanged to "test" and "all").

    .venv/bin/python bench/cluster_quality.py
    .venv/bin/python bench/cluster_quality.py --models lite2 --orders 50
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from sklearn.cluster import HDBSCAN, AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

ROOT = Path(__file__).resolve().parent.parent
# bench/embedder.py would shadow the embedder package: look in the repository, not in bench/.
sys.path[0] = str(ROOT)

from clusterer.logic import Candidate, choose
from clusterer.recluster import Current, Item, Proposal, propose
from clusterer.settings import ClustererSettings
from common.calibration import Calibration, calibrate
from embedder.decode import decode_image
from embedder.model import OnnxModel
from embedder.preprocess import batch
from mammoth_export import eval_photos

SPLITS = ("tune", "test", "all")
UPLOAD_SEED = 15
# Agglomerative distance thresholds tried on "tune" (cosine distance = 1 - cosine).
AGGLO_GRID = np.round(np.arange(0.02, 1.001, 0.01), 2)
PERCENTILES = (5, 25, 50, 75, 95)


@dataclass(frozen=True)
class Photos:
    """The embedded set: unit vectors with each photo's kind, split and file."""

    vectors: NDArray[np.float32]
    kinds: list[str]
    splits: list[str]
    files: list[str]

    def subset(self, split: str) -> Photos:
        keep = [i for i, s in enumerate(self.splits) if split in ("all", s)]
        return Photos(
            self.vectors[keep],
            [self.kinds[i] for i in keep],
            [self.splits[i] for i in keep],
            [self.files[i] for i in keep],
        )


def export_models(models_dir: Path, names: Sequence[str]) -> dict[str, Path]:
    """The models' folders, exported once (fp32 only) into models_dir."""
    from mammoth_export.colour_model import export_colour_model
    from mammoth_export.efficientnet import export_image_encoder
    from mammoth_export.export import export_tiny_clip, quiet_export_logs

    exporters: dict[str, Callable[[Path], object]] = {
        "lite2": lambda d: export_image_encoder(d, fp16=False, int8=False),
        "tiny-clip": lambda d: export_tiny_clip(d, fp16=False, int8=False),
        "colour": export_colour_model,
    }
    quiet_export_logs()
    folders = {}
    for name in names:
        folder = models_dir / name
        if not (folder / "manifest.json").is_file():
            start = time.perf_counter()
            exporters[name](folder)
            print(f"exported {name} to {folder} in {time.perf_counter() - start:.0f} s")
        folders[name] = folder
    return folders


def embed(model: OnnxModel, out: Path, entries: list[dict[str, str]]) -> Photos:
    """Every photo decoded and preprocessed as the embedder does, embedded in batches of 8."""
    Image.init()  # as the embedder's decoder worker does first: every Pillow plugin loaded
    pixels = [decode_image(str(out / e["file"]), model.manifest.preprocess).pixels for e in entries]
    vectors = np.concatenate(
        [model.embed_images(batch(pixels[i : i + 8])) for i in range(0, len(pixels), 8)]
    )
    # The service's vectors are unit already; normalising again changes nothing but rounding.
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return Photos(
        vectors.astype(np.float32),
        [e["kind"] for e in entries],
        [e["split"] for e in entries],
        [e["file"] for e in entries],
    )


def online(
    vectors: NDArray[np.float32],
    threshold: float | None,
    order: Sequence[int],
    prior: float = 0.72,
) -> list[int]:
    """Cluster of each photo when filed one by one in `order` by the clusterer's rule.

    `threshold` None: the calibrated rule, recalibrated on every photo from all photos so far
    (as the clusterer does while a model is small: common/calibration.py), each cluster's
    threshold that of its size; a number: that threshold, flat (CLUSTER_THRESHOLD set).
    """
    ids: list[uuid.UUID] = []
    sums: list[NDArray[np.float32]] = []
    counts: list[int] = []
    found = [-1] * len(vectors)
    seen: list[int] = []
    for i in order:
        seen.append(i)
        rule = (
            calibrate(vectors[seen], len(seen), prior)
            if threshold is None
            else Calibration.flat(threshold)
        )
        vector = vectors[i]
        candidates = [
            Candidate(
                cid,
                float(s @ vector / (np.linalg.norm(s) * np.linalg.norm(vector))),
                rule.threshold_for(n),
            )
            for cid, s, n in zip(ids, sums, counts, strict=True)
        ]
        best = choose(candidates)
        if best is None:
            ids.append(uuid.uuid4())
            sums.append(vector.copy())
            counts.append(1)
            found[i] = len(ids) - 1
        else:
            k = ids.index(best.cluster_id)
            sums[k] = (sums[k] + vector).astype(np.float32)  # pgvector sums in float32
            counts[k] += 1
            found[i] = k
    return found


def after_proposals(
    vectors: NDArray[np.float32], clusters: list[int], prior: float
) -> tuple[list[int], int]:
    """The clusters after one re-clustering with every proposal accepted (merges, then the
    rest, as an admin working down the list would), and how many proposals there were."""
    contents = [uuid.UUID(int=i + 1) for i in range(len(clusters))]
    ids = {c: uuid.UUID(int=10_000 + c) for c in set(clusters)}
    items = [Item(contents[i], ids[c]) for i, c in enumerate(clusters)]
    current = {cid: Current(cid, True, clusters.count(c)) for c, cid in ids.items()}
    linkage = calibrate(vectors, len(vectors), prior).linkage
    proposals = propose(items, vectors, current, linkage, 5000).proposals
    cluster_of = {c: ids[k] for c, k in zip(contents, clusters, strict=True)}
    for p in sorted(proposals, key=lambda p: p.kind != "merge"):
        _accept(p, cluster_of)
    labels = {cid: n for n, cid in enumerate(dict.fromkeys(cluster_of.values()))}
    return [labels[cluster_of[c]] for c in contents], len(proposals)


def _accept(p: Proposal, cluster_of: dict[uuid.UUID, uuid.UUID]) -> None:
    if p.kind == "merge":
        target, sources = uuid.UUID(p.plan["target"]), {uuid.UUID(s) for s in p.plan["sources"]}
        for content, cluster in cluster_of.items():
            if cluster in sources:
                cluster_of[content] = target
        return
    source = uuid.UUID(p.plan.get("from", p.plan.get("cluster")))
    target = uuid.UUID(p.plan["to"]) if p.kind == "move" else uuid.uuid4()
    for m in p.plan.get("members", p.plan.get("part", [])):
        if cluster_of[uuid.UUID(m)] == source:
            cluster_of[uuid.UUID(m)] = target


def hdbscan(vectors: NDArray[np.float32]) -> list[int]:
    labels = HDBSCAN(min_cluster_size=2, metric="euclidean", copy=True).fit_predict(vectors)
    # Noise (-1) is one singleton cluster per photo.
    return [int(x) for x in np.where(labels < 0, -1 - np.arange(len(labels)), labels)]


def agglomerative(vectors: NDArray[np.float32], distance: float) -> list[int]:
    model = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", distance_threshold=distance
    )
    return [int(x) for x in model.fit_predict(vectors)]


def purity(kinds: list[str], clusters: list[int]) -> float:
    """The share of photos whose cluster's most common kind is their own."""
    members: dict[int, Counter[str]] = {}
    for kind, cluster in zip(kinds, clusters, strict=True):
        members.setdefault(cluster, Counter())[kind] += 1
    return sum(c.most_common(1)[0][1] for c in members.values()) / len(kinds)


def row(method: str, split: str, photos: Photos, clusters: list[int]) -> str:
    sizes = Counter(clusters)
    singletons = sum(1 for n in sizes.values() if n == 1)
    n = len(photos.kinds)
    return (
        f"| {method} | {split} | {n} | {len(set(photos.kinds))} |"
        f" {adjusted_rand_score(photos.kinds, clusters):.3f} |"
        f" {normalized_mutual_info_score(photos.kinds, clusters):.3f} |"
        f" {purity(photos.kinds, clusters):.3f} | {len(sizes)} | {singletons}"
        f" ({100 * singletons / n:.0f}%) |"
    )


def upload_order(n: int, seed: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def best_on_tune(score: Callable[[float], float], grid: Sequence[float]) -> float:
    """The grid value with the highest score (the smallest such on ties)."""
    scores = [score(t) for t in grid]
    return float(grid[int(np.argmax(scores))])


def distributions(photos: Photos, threshold: float) -> None:
    """Nearest-neighbour cosines against different-kind pair cosines, as percentiles."""
    sims = photos.vectors.astype(np.float64) @ photos.vectors.T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    labels = np.array(photos.kinds)
    same = labels[:, None] == labels[None, :]
    nearest = sims.max(axis=1)
    nearest_same = np.where(same, sims, -np.inf).max(axis=1)
    nearest_other = np.where(~same, sims, -np.inf).max(axis=1)
    upper = np.triu(np.ones_like(same), k=1)
    other_pairs = sims[~same & upper]
    same_pairs = sims[same & upper]
    header = " ".join(f"{'p' + str(p):>6}" for p in PERCENTILES)
    print(f"  cosine distributions over all {len(labels)} photos (threshold {threshold:g}):")
    print(f"    {'':<38} {'n':>5} {header}")
    for name, values in (
        ("nearest neighbour (any kind)", nearest),
        ("nearest neighbour of the same kind", nearest_same),
        ("nearest neighbour of another kind", nearest_other),
        ("same-kind pairs", same_pairs),
        ("different-kind pairs (all of them)", other_pairs),
    ):
        cells = " ".join(f"{v:>6.3f}" for v in np.percentile(values, PERCENTILES))
        print(f"    {name:<38} {len(values):>5} {cells}")
    nn_same = float(np.mean(same[np.arange(len(labels)), sims.argmax(axis=1)]))
    print(
        f"    nearest neighbour is of the same kind for {100 * nn_same:.0f}% of photos;"
        f" {100 * float(np.mean(nearest < threshold)):.0f}% have no neighbour at or above the"
        f" threshold; {100 * float(np.mean(other_pairs >= threshold)):.1f}% of different-kind"
        " pairs reach it"
    )
    i, j = np.unravel_index(int(np.argmax(sims)), sims.shape)
    print(
        f"    most similar pair: {photos.files[i]} ~ {photos.files[j]} ({sims[i, j]:.3f});"
        " a near-duplicate would show here near 1"
    )


def evaluate(name: str, model: OnnxModel, photos: Photos, orders: int) -> None:
    own = model.manifest.cluster_threshold
    default = float(ClustererSettings.model_fields["cluster_threshold"].default)
    threshold = own if own is not None else default
    source = "manifest" if own is not None else "ClustererSettings default"
    print(f"\n== {name}: {model.model_id} ({model.dim}-d), threshold {threshold:g} ({source})")
    tune = photos.subset("tune")
    agglo_t = best_on_tune(
        lambda t: float(adjusted_rand_score(tune.kinds, agglomerative(tune.vectors, t))),
        list(AGGLO_GRID),
    )
    # Not today's system: the online rule with a threshold chosen on "tune", for comparison.
    online_grid = [round(1 - t, 2) for t in AGGLO_GRID][::-1]
    order = upload_order(len(tune.kinds), UPLOAD_SEED)
    online_t = best_on_tune(
        lambda t: float(adjusted_rand_score(tune.kinds, online(tune.vectors, t, order))),
        online_grid,
    )
    print(
        f"  agglomerative distance threshold chosen on tune: {agglo_t:g};"
        f" online threshold that would be best on tune: {online_t:g}"
    )
    print(
        "\n| method | split | photos | kinds | ARI | NMI | purity | clusters | singletons |"
        "\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    spread = []
    for split in SPLITS:
        part = photos.subset(split)
        n = len(part.kinds)
        order = upload_order(n, UPLOAD_SEED)
        fixed = f"online, flat t {threshold:g} (before)"
        print(row(fixed, split, part, online(part.vectors, threshold, order)))
        print(
            row(
                f"online, flat t {online_t:g} (tuned)",
                split,
                part,
                online(part.vectors, online_t, order),
            )
        )
        calibrated = online(part.vectors, None, order, threshold)
        print(row("**online, calibrated**", split, part, calibrated))
        merged, count = after_proposals(part.vectors, calibrated, threshold)
        print(row(f"**+ {count} proposals accepted**", split, part, merged))
        print(row("HDBSCAN, min size 2", split, part, hdbscan(part.vectors)))
        print(
            row(f"agglomerative, d {agglo_t:g}", split, part, agglomerative(part.vectors, agglo_t))
        )
        linkage = calibrate(part.vectors, n, threshold).linkage
        print(
            row(
                f"agglomerative, calibrated d {1 - linkage:.2f}",
                split,
                part,
                agglomerative(part.vectors, 1 - linkage),
            )
        )
        results = []
        for s in range(orders):
            again = online(part.vectors, None, upload_order(n, s), threshold)
            results.append(
                (
                    adjusted_rand_score(part.kinds, again),
                    adjusted_rand_score(
                        part.kinds, after_proposals(part.vectors, again, threshold)[0]
                    ),
                )
            )
        online_aris, after_aris = zip(*results, strict=True)
        spread.append(
            f"{split}: online {np.min(online_aris):.3f} / {np.median(online_aris):.3f} /"
            f" {np.max(online_aris):.3f}, after proposals {np.min(after_aris):.3f} /"
            f" {np.median(after_aris):.3f} / {np.max(after_aris):.3f}"
        )
    print(
        f"\n  calibrated ARI over {orders} upload orders (min / median / max):\n    "
        + "\n    ".join(spread)
    )
    distributions(photos, threshold)


async def live(base: str, photos_dir: Path, entries: list[dict[str, str]], split: str) -> None:
    """The split's photos uploaded one by one to a running system (scripts/up.sh; an open or
    admin-keyed gateway at `base`), their clusters read back; then one re-clustering run of
    the model with every proposal accepted through the API, and the clusters read again."""
    import aiohttp

    chosen = [e for e in entries if split in ("all", e["split"])]
    order = upload_order(len(chosen), UPLOAD_SEED)
    headers = {"X-API-Key": key} if (key := os.environ.get("MAMMOTH_API_KEY")) else {}
    async with aiohttp.ClientSession(base, headers=headers) as http:

        async def call(method: str, path: str, **kwargs: Any) -> Any:
            async with http.request(method, path, **kwargs) as response:
                body = await response.json()
                if response.status >= 300:
                    raise RuntimeError(f"{method} {path}: {response.status} {body}")
                return body

        uploads: list[str] = [""] * len(chosen)
        jobs = []
        started = time.perf_counter()
        for i in order:
            form = aiohttp.FormData()
            path = photos_dir / chosen[i]["file"]
            form.add_field("files[]", path.read_bytes(), filename=path.name)
            form.add_field("owner", "cluster-quality")
            answer = await call("POST", "/api/v1/ingest", data=form)
            uploads[i] = answer["system_ids"][0]
            jobs.append(answer["job_id"])
        for job in jobs:
            while (await call("GET", f"/api/v1/ingest/{job}/status"))["status"] not in (
                "done",
                "failed",
                "partial",
            ):
                await asyncio.sleep(0.2)
        print(
            f"  {len(uploads)} photos uploaded and filed in {time.perf_counter() - started:.1f} s"
        )

        async def clusters() -> tuple[list[int], str]:
            objects = [await call("GET", f"/api/v1/objects/{u}") for u in uploads]
            ids = [(o.get("cluster") or {}).get("id") or o["system_id"] for o in objects]
            numbers = {c: n for n, c in enumerate(dict.fromkeys(ids))}
            return [numbers[c] for c in ids], objects[0]["embeddings"][0]["model_id"]

        kinds = [e["kind"] for e in chosen]
        part = Photos(
            np.zeros((len(kinds), 1), dtype=np.float32),
            kinds,
            [split] * len(kinds),
            [e["file"] for e in chosen],
        )
        online_clusters, model_id = await clusters()
        print(row("live: online, calibrated", split, part, online_clusters))
        before = {
            r["id"]
            for r in (await call("GET", "/api/v1/clusters/proposals?status=all&limit=200"))["runs"]
        }
        await call("POST", "/api/v1/clusters/recluster", json={"model_id": model_id})
        while True:
            listed = await call("GET", f"/api/v1/clusters/proposals?model_id={model_id}&limit=200")
            runs = [r for r in listed["runs"] if r["id"] not in before]
            if runs and runs[0]["status"] != "running":
                break
            await asyncio.sleep(0.2)
        accepted = 0
        for proposal in sorted(listed["proposals"], key=lambda p: p["kind"] != "merge"):
            async with http.post(f"/api/v1/clusters/proposals/{proposal['id']}/accept") as response:
                accepted += response.status == 200
        after, _ = await clusters()
        print(
            row(
                f"live: + {accepted} of {len(listed['proposals'])} proposals accepted",
                split,
                part,
                after,
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=eval_photos.DEFAULT_OUT)
    parser.add_argument("--cache", type=Path, default=eval_photos.DEFAULT_CACHE)
    parser.add_argument("--models-dir", type=Path, default=Path(".run/eval-photos/models"))
    parser.add_argument(
        "--models",
        nargs="+",
        default=["lite2", "tiny-clip", "colour"],
        choices=["lite2", "tiny-clip", "colour"],
    )
    parser.add_argument("--orders", type=int, default=20, help="upload orders for the spread")
    parser.add_argument(
        "--live",
        metavar="URL",
        help="also upload the --live-split photos to the running system at URL (scripts/up.sh)",
    )
    parser.add_argument("--live-split", default="test", choices=SPLITS)
    args = parser.parse_args()
    start = time.perf_counter()
    if not eval_photos.is_built(args.photos):
        eval_photos.build(args.photos, args.cache)
    entries = eval_photos.load(args.photos)
    per_split = eval_photos.counts(entries)
    print(f"{len(entries)} photos of {len(per_split['all'])} kinds in {args.photos}")
    for kind, total in per_split["all"].items():
        print(
            f"  {kind:<11} {total:>3} (tune {per_split['tune'][kind]},"
            f" test {per_split['test'][kind]})"
        )
    if args.live:
        print(f"\n== live: {args.live_split} photos through the running system at {args.live}")
        print(
            "\n| method | split | photos | kinds | ARI | NMI | purity | clusters | singletons |"
            "\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
        )
        asyncio.run(live(args.live, args.photos, entries, args.live_split))
    for name, folder in export_models(args.models_dir, args.models).items():
        model = OnnxModel(folder, providers=("cpu",), threads=2)
        evaluate(name, model, embed(model, args.photos, entries), args.orders)
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
