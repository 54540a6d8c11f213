"""Clusterer settings: the common ones plus thresholds, placeholder labels and folder upkeep."""

from __future__ import annotations

from pydantic import Field

from common.labels import DEFAULT_LABELS, LabelSet, LabelTemplate
from common.settings import WorkerSettings


class ClustererSettings(WorkerSettings):
    """Environment variables read by the clusterer."""

    # Used for a model whose manifest names no threshold; set explicitly, it wins over both.
    cluster_threshold: float = Field(0.72, gt=0, le=1)
    # Placeholder names: the best zero-shot label through the embedder's text RPC.
    cluster_labels: LabelSet = DEFAULT_LABELS
    cluster_label_template: LabelTemplate = "a photo of {}"
    label_timeout_s: float = Field(5.0, gt=0, le=120)
    # How often leftover folder syncs (after a crash) and the cluster gauge are looked at.
    folder_sweep_interval_s: float = Field(10.0, gt=0, le=3600)
    worker_http_port: int = Field(8082, ge=0, le=65535)

    @property
    def threshold_is_explicit(self) -> bool:
        """True when CLUSTER_THRESHOLD was set, so it overrides a model's own."""
        return "cluster_threshold" in self.model_fields_set
