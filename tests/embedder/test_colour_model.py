"""The hand-built colour model: images embed by colour, texts by colour words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from embedder.manifest import Manifest
from embedder.model import OnnxModel
from embedder.preprocess import batch, to_model_input
from mammoth_export.colour_model import COLOURS, export_colour_model

RED, GREEN, BLUE = COLOURS["red"], COLOURS["green"], COLOURS["blue"]


@pytest.fixture(scope="module")
def colour_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models") / "colour"
    export_colour_model(directory)
    return directory


@pytest.fixture(scope="module")
def model(colour_dir: Path) -> OnnxModel:
    return OnnxModel(colour_dir, providers=("cpu",), threads=1)


def _solid(rgb: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, rgb)


def _noisy(rgb: tuple[int, int, int], seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Mostly `rgb`: 80% of pixels jittered around it, 20% uniformly random."""
    rng = np.random.default_rng(seed)
    height, width = size[1], size[0]
    base = np.array(rgb, dtype=np.float64) + rng.normal(0, 20, (height, width, 3))
    noise = rng.uniform(0, 255, (height, width, 3))
    pixels = np.where(rng.random((height, width, 1)) < 0.2, noise, base)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _embed(model: OnnxModel, images: list[Image.Image]) -> NDArray[np.float32]:
    p = model.manifest.preprocess
    return model.embed_images(batch([to_model_input(image, p) for image in images]))


def test_export_colour_model_writes_a_readable_manifest_when_exported(colour_dir: Path) -> None:
    manifest = Manifest.read(colour_dir)
    assert manifest.model_id == "mammothbox/colour-test"
    assert manifest.embedding_dim == len(COLOURS)
    assert manifest.has_text
    assert manifest.context_length == 8
    assert manifest.pad_token_id == 0
    for name in ("vision.onnx", "text.onnx", "tokenizer.json", "manifest.json"):
        assert (colour_dir / name).is_file()


def test_colour_model_embeds_each_palette_colour_on_its_own_axis_when_image_is_solid(
    model: OnnxModel,
) -> None:
    vectors = _embed(model, [_solid(rgb) for rgb in COLOURS.values()])
    assert vectors.shape == (len(COLOURS), len(COLOURS))
    np.testing.assert_allclose(vectors, np.eye(len(COLOURS)), atol=1e-3)


def test_colour_model_images_agree_when_same_colour_and_differ_when_not(
    model: OnnxModel,
) -> None:
    images = {
        name: [_solid(rgb), _noisy(rgb, seed=1), _noisy(rgb, seed=2)]
        for name, rgb in (("red", RED), ("green", GREEN), ("blue", BLUE))
    }
    vectors = {name: _embed(model, group) for name, group in images.items()}
    for name, group in vectors.items():
        similarity = group @ group.T
        assert similarity.min() > 0.95, name
        for other, other_group in vectors.items():
            if other != name:
                assert (group @ other_group.T).max() < 0.3, (name, other)


def test_colour_model_vectors_are_unit_norm_when_batch_is_1_or_5(model: OnnxModel) -> None:
    images = [_noisy(RED, 3), _solid(BLUE), _noisy(GREEN, 4), _solid((90, 90, 90)), _noisy(RED, 5)]
    five = _embed(model, images)
    one = _embed(model, images[:1])
    assert five.shape == (5, len(COLOURS)) and one.shape == (1, len(COLOURS))
    np.testing.assert_allclose(np.linalg.norm(five, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(one[0], five[0], atol=1e-5)  # batching does not change a vector

    texts = ["red", "a blue photo", "green", "nothing here", "the white image"]
    text_five = model.embed_texts(texts)
    text_one = model.embed_texts(texts[:1])
    assert text_five.shape == (5, len(COLOURS)) and text_one.shape == (1, len(COLOURS))
    np.testing.assert_allclose(np.linalg.norm(text_five, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(text_one[0], text_five[0], atol=1e-6)


def test_colour_model_text_finds_red_images_first_when_text_is_a_red_photo(
    model: OnnxModel,
) -> None:
    labels = ["red", "red", "blue", "blue", "green", "green", "yellow", "purple"]
    images = [
        _noisy(RED, 10),
        _solid(RED),
        _noisy(BLUE, 11),
        _solid(BLUE),
        _noisy(GREEN, 12),
        _solid(GREEN),
        _solid(COLOURS["yellow"]),
        _solid(COLOURS["purple"]),
    ]
    image_vectors = _embed(model, images)
    [text] = model.embed_texts(["a red photo"])
    scores = image_vectors @ text
    ranked = [labels[i] for i in np.argsort(-scores)]
    assert ranked[:2] == ["red", "red"]
    assert scores[:2].min() > 0.95
    assert scores[2:].max() < 0.3
    np.testing.assert_allclose(text, image_vectors[1], atol=1e-3)  # same direction as solid red


def test_colour_model_text_ignores_case_when_text_is_upper_case(model: OnnxModel) -> None:
    upper, lower = model.embed_texts(["BLUE", "blue"])
    np.testing.assert_allclose(upper, lower, atol=1e-6)
    assert int(np.argmax(upper)) == list(COLOURS).index("blue")
    assert upper.max() > 0.999


def test_colour_model_text_is_uniform_when_it_has_no_colour_words(model: OnnxModel) -> None:
    dim = len(COLOURS)
    unknown, fillers, empty = model.embed_texts(["zebra quantum xylophone", "a photo of", ""])
    for vector in (unknown, fillers, empty):
        assert np.isfinite(vector).all()
        np.testing.assert_allclose(np.linalg.norm(vector), 1.0, atol=1e-5)
        # No colour is preferred: every axis gets the same weight.
        np.testing.assert_allclose(vector, np.full(dim, 1 / np.sqrt(dim)), atol=1e-5)


def test_colour_model_text_mixes_axes_when_text_names_two_colours(model: OnnxModel) -> None:
    [vector] = model.embed_texts(["red and blue"])
    names = list(COLOURS)
    expected = np.zeros(len(COLOURS))
    expected[[names.index("red"), names.index("blue")]] = 1 / np.sqrt(2)
    np.testing.assert_allclose(vector, expected, atol=1e-5)


def test_colour_model_text_keeps_only_eight_tokens_when_text_is_long(model: OnnxModel) -> None:
    # "red" is the ninth token, past the context length, so it is cut off.
    [vector] = model.embed_texts(["a a a a a a a a red"])
    np.testing.assert_allclose(vector, np.full(len(COLOURS), 1 / np.sqrt(len(COLOURS))), atol=1e-5)
