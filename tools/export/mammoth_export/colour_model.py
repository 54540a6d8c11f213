"""A tiny hand-built ONNX embedding model of known meaning: colours.

Images embed by their mean colour, texts by the colour words they contain, both onto one
axis per palette colour, so tests of clustering and text search can assert on meaning:
two red images have cosine ~1, red and blue ~0, and "a red photo" points at the red images.
Built with onnx.helper only (no torch); loads through the ordinary manifest and OnnxModel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from embedder.manifest import Manifest, ModelFiles, Preprocess

# name -> RGB in [0, 255]; embedding axis k is COLOURS' k-th entry.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "orange": (255, 128, 0),
    "purple": (128, 0, 128),
}
FILLER_WORDS = ("a", "an", "the", "photo", "picture", "image", "of")
IMAGE_SIZE = 32
CONTEXT_LENGTH = 8
PAD_ID = 0
TEMPERATURE = 0.02  # squared distance in [0, 1]^3 space per nat of similarity
TEXT_EPSILON = 1e-6  # added to every text axis so a text without colour words has a norm
MODEL_ID = "mammothbox/colour-test"
OPSET = 17
IR_VERSION = 8


def _palette() -> NDArray[np.float32]:
    return np.array(list(COLOURS.values()), dtype=np.float32) / 255.0


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _vision_graph() -> onnx.GraphProto:
    """pixel_values [N,3,S,S] in [0,1] -> softmax over -||mean colour - p_k||^2 / T -> L2."""
    dim = len(COLOURS)
    palette = _palette().reshape(1, dim, 3)
    initializers = [
        numpy_helper.from_array(palette, "palette"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis_2"),
        numpy_helper.from_array(np.array(-1.0 / TEMPERATURE, dtype=np.float32), "neg_inv_t"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["pixel_values"], ["mean_hw"], axes=[2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean_hw", "axis_1"], ["colour"]),  # [N,1,3]
        helper.make_node("Sub", ["colour", "palette"], ["diff"]),  # [N,D,3]
        helper.make_node("Mul", ["diff", "diff"], ["diff_sq"]),
        helper.make_node("ReduceSum", ["diff_sq", "axis_2"], ["dist_sq"], keepdims=0),  # [N,D]
        helper.make_node("Mul", ["dist_sq", "neg_inv_t"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["weights"], axis=-1),
        helper.make_node("LpNormalization", ["weights"], ["embeddings"], axis=-1, p=2),
    ]
    return helper.make_graph(
        nodes,
        "colour_vision",
        [
            helper.make_tensor_value_info(
                "pixel_values", TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE]
            )
        ],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", dim])],
        initializers,
    )


def _vocab() -> dict[str, int]:
    words = ["[PAD]", "[UNK]", *COLOURS, *FILLER_WORDS]
    return {word: i for i, word in enumerate(words)}


def _text_graph(vocab: dict[str, int]) -> onnx.GraphProto:
    """ids [N,L] -> one-hot colour rows, masked, summed over tokens, + epsilon -> L2."""
    dim = len(COLOURS)
    table = np.zeros((len(vocab), dim), dtype=np.float32)
    for k, name in enumerate(COLOURS):
        table[vocab[name], k] = 1.0
    initializers = [
        numpy_helper.from_array(table, "token_table"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_1"),
        numpy_helper.from_array(np.full((1, dim), TEXT_EPSILON, dtype=np.float32), "epsilon"),
    ]
    nodes = [
        helper.make_node("Gather", ["token_table", "input_ids"], ["token_vecs"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axis_last"], ["mask_3d"]),  # [N,L,1]
        helper.make_node("Mul", ["token_vecs", "mask_3d"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis_1"], ["summed"], keepdims=0),  # [N,D]
        helper.make_node("Add", ["summed", "epsilon"], ["nonzero"]),
        helper.make_node("LpNormalization", ["nonzero"], ["embeddings"], axis=-1, p=2),
    ]
    return helper.make_graph(
        nodes,
        "colour_text",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", CONTEXT_LENGTH]),
            helper.make_tensor_value_info(
                "attention_mask", TensorProto.INT64, ["N", CONTEXT_LENGTH]
            ),
        ],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", dim])],
        initializers,
    )


def _tokenizer(vocab: dict[str, int]) -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.enable_truncation(max_length=CONTEXT_LENGTH)
    tokenizer.enable_padding(length=CONTEXT_LENGTH, pad_id=PAD_ID, pad_token="[PAD]")
    return tokenizer


def export_colour_model(out_dir: Path) -> Manifest:
    """Write vision.onnx, text.onnx, tokenizer.json and manifest.json into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    files = ModelFiles(vision="vision.onnx", text="text.onnx", tokenizer="tokenizer.json")
    assert files.text is not None and files.tokenizer is not None
    _save(_vision_graph(), out_dir / files.vision)
    _save(_text_graph(vocab), out_dir / files.text)
    _tokenizer(vocab).save(str(out_dir / files.tokenizer))
    manifest = Manifest(
        model_id=MODEL_ID,
        source="hand-built",
        embedding_dim=len(COLOURS),
        preprocess=Preprocess(
            image_size=IMAGE_SIZE,
            resize="squash",
            resize_to=IMAGE_SIZE,
            interpolation="bilinear",
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            rescale=1 / 255,
        ),
        files=files,
        context_length=CONTEXT_LENGTH,
        pad_token_id=PAD_ID,
        cluster_threshold=0.9,
    )
    manifest.write(out_dir)
    return manifest
