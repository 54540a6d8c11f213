"""Analyzer settings: the VLM, its resilience limits, and the CLIP fallback."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from common.labels import DEFAULT_LABELS, LabelSet, LabelTemplate
from common.settings import WorkerSettings


class AnalyzerSettings(WorkerSettings):
    """Environment variables read by the analyzer."""

    # Gemini: whether to call it, whether to fall back to CLIP labels when it fails, the
    # key and the model.
    vlm_enabled: bool = True
    vlm_fallback_to_clip: bool = True
    gemini_api_key: SecretStr | None = None
    vlm_model: str = Field("gemini-2.5-flash", min_length=1, max_length=200)
    # Another endpoint for the Gemini API (a proxy, or the tests' fake server).
    vlm_base_url: str | None = None
    # The time limit of one call, in seconds.
    vlm_timeout: float = Field(5.0, gt=0, le=600)
    # Retries of a failed call, with exponential backoff between these bounds.
    vlm_max_retries: int = Field(3, ge=0, le=20)
    vlm_backoff_base_s: float = Field(0.5, gt=0, le=60)
    vlm_backoff_max_s: float = Field(30.0, gt=0, le=3600)
    # A retry delay the server asks for is honoured up to this; asked for more, we stop.
    vlm_max_retry_delay_s: float = Field(60.0, gt=0, le=3600)
    # Calls per window across every analyzer replica (0: no limit); the window is a minute.
    vlm_rate_limit_per_minute: int = Field(60, ge=0, le=100_000)
    vlm_rate_window_s: float = Field(60.0, gt=0, le=3600)
    # Calls in flight per replica; the circuit breaker opens after so many failures in a row.
    vlm_concurrency: int = Field(4, ge=1, le=256)
    vlm_breaker_failures: int = Field(5, ge=1, le=1000)
    vlm_breaker_reset_s: float = Field(30.0, gt=0, le=3600)
    # After a 401/403, how long to wait before trying the key again.
    vlm_unauthorized_recheck_s: float = Field(300.0, gt=0)
    # Images are downscaled to this many pixels on the long side before they are sent.
    vlm_max_image_px: int = Field(1024, ge=64, le=4096)

    # The CLIP fallback: labels scored zero-shot through the embedder's text RPC.
    analysis_labels: LabelSet = DEFAULT_LABELS
    analysis_label_template: LabelTemplate = "a photo of {}"
    label_timeout_s: float = Field(5.0, gt=0, le=120)
    fallback_max_tags: int = Field(5, ge=1, le=15)
    fallback_min_probability: float = Field(0.05, ge=0, le=1)

    worker_http_port: int = Field(8083, ge=0, le=65535)

    @field_validator("gemini_api_key", mode="before")
    @classmethod
    def _blank_key(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def vlm_usable(self) -> bool:
        """Whether Gemini may be called at all (enabled, with a key)."""
        return self.vlm_enabled and self.gemini_api_key is not None
