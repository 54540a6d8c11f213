"""Clusterer settings: the common ones plus thresholds, placeholder labels and folder upkeep."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from common.labels import DEFAULT_LABELS
from common.settings import CommonSettings, comma_separated


class ClustererSettings(CommonSettings):
    """Environment variables read by the clusterer."""

    # Used for a model whose manifest names no threshold; set explicitly, it wins over both.
    cluster_threshold: float = Field(0.72, gt=0, le=1)
    # Placeholder names: the best zero-shot label through the embedder's text RPC.
    cluster_labels: Annotated[tuple[str, ...], NoDecode] = DEFAULT_LABELS
    cluster_label_template: str = "a photo of {}"
    label_timeout_s: float = Field(5.0, gt=0, le=120)
    # How often leftover folder syncs (after a crash) and the cluster gauge are looked at.
    folder_sweep_interval_s: float = Field(10.0, gt=0, le=3600)
    worker_http_host: str = "0.0.0.0"
    worker_http_port: int = Field(8082, ge=0, le=65535)

    @field_validator("cluster_labels", mode="before")
    @classmethod
    def _labels(cls, value: object) -> object:
        value = comma_separated(value)
        if not value:
            raise ValueError("needs at least one label")
        return value

    @field_validator("cluster_label_template")
    @classmethod
    def _template(cls, value: str) -> str:
        if value.count("{}") != 1:
            raise ValueError("must contain {} once, where the label goes")
        return value

    @property
    def threshold_is_explicit(self) -> bool:
        """True when CLUSTER_THRESHOLD was set, so it overrides a model's own."""
        return "cluster_threshold" in self.model_fields_set
