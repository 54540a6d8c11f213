"""Clusterer settings: the common ones plus thresholds, placeholder labels and folder upkeep."""

from __future__ import annotations

from pydantic import Field

from common.labels import DEFAULT_LABELS, LabelSet, LabelTemplate
from common.settings import WorkerSettings


class ClustererSettings(WorkerSettings):
    """Environment variables read by the clusterer."""

    # The prior of a model whose manifest names no threshold (the data outweighs it within a
    # few items: clusterer/calibration.py); set explicitly, it is the threshold, uncalibrated.
    cluster_threshold: float = Field(0.72, gt=0, le=1)
    # Items drawn at random from a model's embeddings to calibrate its thresholds.
    cluster_calibration_sample: int = Field(2000, ge=10, le=20000)
    # Placeholder names: the best zero-shot label through the embedder's text RPC.
    cluster_labels: LabelSet = DEFAULT_LABELS
    cluster_label_template: LabelTemplate = "a photo of {}"
    label_timeout_s: float = Field(5.0, gt=0, le=120)
    # How often leftover folder syncs (after a crash) and the cluster gauge are looked at.
    folder_sweep_interval_s: float = Field(10.0, gt=0, le=3600)
    # Re-clustering (clusterer/recluster.py): how often each model whose clusters changed is
    # looked at again (0: only on an admin's command), the most items clustered at once (a
    # region: memory grows with its square, ~8 bytes a pair), and whether merges of
    # provisional clusters are carried out without an admin.
    cluster_recluster_interval_s: float = Field(3600.0, ge=0, le=7 * 86400)
    cluster_recluster_max_items: int = Field(5000, ge=10, le=20000)
    cluster_auto_merge: bool = False
    worker_http_port: int = Field(8082, ge=0, le=65535)

    @property
    def threshold_is_explicit(self) -> bool:
        """True when CLUSTER_THRESHOLD was set, so it overrides a model's own."""
        return "cluster_threshold" in self.model_fields_set
