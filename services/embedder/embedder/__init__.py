"""The MammothBox embedder: image and text embeddings, media facts, near-duplicates."""
