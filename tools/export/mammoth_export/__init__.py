"""Model export (torch, transformers, onnx): the ONNX graphs and manifests the embedder serves.

Kept apart from the embedder package so the service and its image need only onnxruntime,
tokenizers, Pillow and PyAV. It imports the embedder's manifest and preprocessing (the
format and the pixels it must match); the embedder never imports it.
"""
