"""Execution-provider choice: configured ∩ available, in order, the CPU as a last resort."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from embedder.model import choose_providers


def test_choose_providers_prefers_cuda_when_onnxruntime_has_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A GPU build cannot exist here: fake only what onnxruntime reports.
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert choose_providers(("cuda", "cpu")) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(("cpu",)) == ["CPUExecutionProvider"]


def test_choose_providers_falls_back_to_cpu_when_cuda_is_missing() -> None:
    assert "CUDAExecutionProvider" not in ort.get_available_providers()
    assert choose_providers(("cuda", "cpu")) == ["CPUExecutionProvider"]
    assert choose_providers(("tensorrt", "cuda")) == ["CPUExecutionProvider"]
