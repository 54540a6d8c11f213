"""python -m analyzer: Gemini vision analysis of media, with a CLIP zero-shot fallback."""

from __future__ import annotations

from analyzer.app import worker
from analyzer.settings import AnalyzerSettings

if __name__ == "__main__":
    worker.main(AnalyzerSettings)
