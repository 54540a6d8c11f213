"""Text to the text graph's inputs with the model's own tokenizer.json (no transformers).

Truncation and padding are left to the `tokenizers` library, as transformers' CLIP
tokenizer does with `padding="max_length", truncation=True`: the text is cut so that the
post-processor's special tokens still fit, so a long text keeps its <|endoftext|> at the end.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tokenizers import Tokenizer


class TextTokenizer:
    """A tokenizer.json, giving fixed-length int64 ids and attention masks."""

    def __init__(self, path: str | Path) -> None:
        self._json = Tokenizer.from_file(str(path)).to_str()
        # One configured copy per (length, pad id): settings are never changed on a
        # tokenizer another thread may be encoding with.
        self._configured: dict[tuple[int, int], Tokenizer] = {}
        self._lock = threading.Lock()

    def _for(self, context_length: int, pad_id: int) -> Tokenizer:
        key = (context_length, pad_id)
        with self._lock:
            tokenizer = self._configured.get(key)
            if tokenizer is None:
                tokenizer = Tokenizer.from_str(self._json)
                tokenizer.enable_truncation(max_length=context_length)
                pad_token = tokenizer.id_to_token(pad_id) or ""
                tokenizer.enable_padding(length=context_length, pad_id=pad_id, pad_token=pad_token)
                self._configured[key] = tokenizer
            return tokenizer

    def encode_batch(
        self, texts: Sequence[str], context_length: int, pad_id: int
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(input_ids, attention_mask), both int64 [N, context_length]."""
        if context_length < 1:
            raise ValueError("context_length must be positive")
        encodings = self._for(context_length, pad_id).encode_batch(list(texts))
        shape = (len(encodings), context_length)
        ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(shape)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(shape)
        return ids, mask
