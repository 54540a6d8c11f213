"""Pure image code against its references: preprocessing vs transformers, pHash, decoding, tokens."""

from __future__ import annotations

import functools
import io
import itertools
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import transformers
from PIL import Image, ImageOps
from skimage import data as skdata
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import BPE

from embedder.decode import (
    DecodeError,
    decode_image,
    decode_video,
    decode_video_keyframes,
    reduce_on_load,
)
from embedder.manifest import Preprocess
from embedder.phash import dct2, hamming, phash_bits
from embedder.preprocess import MAX_EXACT_ASPECT, batch, to_model_input
from embedder.tokenize import TextTokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP = Preprocess(image_size=224, resize_to=224, mean=CLIP_MEAN, std=CLIP_STD)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skdata, name)())


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def with_alpha(image: Image.Image) -> Image.Image:
    alpha = np.random.default_rng(1).integers(0, 256, image.size[::-1], dtype=np.uint8)
    return Image.fromarray(np.dstack([np.asarray(image.convert("RGB")), alpha]))


def palette_with_transparency() -> Image.Image:
    image = photo("chelsea").convert("P")
    image.info["transparency"] = 3
    return image


IMAGES: dict[str, Callable[[], Image.Image]] = {
    **{name: functools.partial(photo, name) for name in PHOTOS},
    "camera-grayscale": lambda: photo("camera"),
    "rocket-L": lambda: photo("rocket").convert("L"),
    "coffee-palette": lambda: photo("coffee").convert("P"),
    "chelsea-palette-transparent": palette_with_transparency,
    "chelsea-RGBA": lambda: with_alpha(photo("chelsea")),
    "chelsea-LA": lambda: with_alpha(photo("chelsea")).convert("LA"),
    "1x500": lambda: noise(1, 500),
    "500x1": lambda: noise(500, 1),
    "333x217": lambda: noise(333, 217),
    "37x999": lambda: noise(37, 999),
    "100x50-upscaled": lambda: noise(100, 50),
    "225x224": lambda: noise(225, 224),
}


# --- preprocessing -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_to_model_input_equals_clip_image_processor_when_any_size_or_mode(name: str) -> None:
    image = IMAGES[name]()
    reference = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 224}, crop_size=224, image_mean=CLIP_MEAN, image_std=CLIP_STD
    )
    expected = reference(image, return_tensors="np")["pixel_values"][0]
    ours = to_model_input(image, CLIP)
    assert ours.dtype == np.float32 and ours.shape == (3, 224, 224)
    np.testing.assert_array_equal(ours, expected)  # bit-identical, not just close


def test_to_model_input_equals_clip_image_processor_when_resize_is_smaller_than_crop() -> None:
    p = Preprocess(image_size=224, resize_to=200, mean=CLIP_MEAN, std=CLIP_STD)
    reference = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 200}, crop_size=224, image_mean=CLIP_MEAN, image_std=CLIP_STD
    )
    image = photo("coffee")
    expected = reference(image, return_tensors="np")["pixel_values"][0]
    np.testing.assert_array_equal(to_model_input(image, p), expected)


def test_to_model_input_equals_squash_resize_when_resize_is_squash_bilinear() -> None:
    p = Preprocess(
        image_size=192, resize="squash", resize_to=192, interpolation="bilinear",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    )  # fmt: skip
    reference = transformers.CLIPImageProcessorPil(
        size={"height": 192, "width": 192},
        do_center_crop=False,
        resample=Image.Resampling.BILINEAR,
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
    )
    image = photo("rocket")
    expected = reference(image, return_tensors="np")["pixel_values"][0]
    np.testing.assert_array_equal(to_model_input(image, p), expected)


def test_to_model_input_stays_small_when_aspect_ratio_is_extreme() -> None:
    strip = noise(1, 224 * MAX_EXACT_ASPECT * 50)  # full resize would be 224 x 716800
    pixels = to_model_input(strip, CLIP)
    assert pixels.shape == (3, 224, 224) and np.isfinite(pixels).all()


def test_batch_stacks_inputs_when_given_several() -> None:
    arrays = [to_model_input(photo(name), CLIP) for name in PHOTOS]
    stacked = batch(arrays)
    assert stacked.shape == (4, 3, 224, 224) and stacked.dtype == np.float32
    np.testing.assert_array_equal(stacked[2], arrays[2])
    with pytest.raises(ValueError):
        batch([])


# --- pHash ---------------------------------------------------------------------------------


def reencoded(image: Image.Image, quality: int, scale: float) -> Image.Image:
    small = image.resize((int(image.width * scale), int(image.height * scale)))
    out = io.BytesIO()
    small.convert("RGB").save(out, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue()))


def test_dct2_matches_scipy_when_given_a_square_block() -> None:
    from scipy.fft import dct  # scikit-image brings scipy; the embedder itself does not need it

    block = np.random.default_rng(2).random((32, 32))
    np.testing.assert_allclose(dct2(block), dct(dct(block, axis=0), axis=1), rtol=1e-9, atol=1e-9)


def test_phash_bits_is_64_binary_chars_when_hashing_any_image() -> None:
    bits = phash_bits(photo("astronaut"))
    assert len(bits) == 64 and set(bits) <= {"0", "1"}


def test_phash_distance_is_zero_when_image_is_identical() -> None:
    for name in PHOTOS:
        assert hamming(phash_bits(photo(name)), phash_bits(photo(name).copy())) == 0


@pytest.mark.parametrize("name", PHOTOS)
def test_phash_distance_is_small_when_photo_is_reencoded_and_halved(name: str) -> None:
    original = photo(name)
    distance = hamming(phash_bits(original), phash_bits(reencoded(original, 60, 0.5)))
    assert distance <= 8, distance


def test_phash_distance_is_large_when_photos_differ() -> None:
    hashes = {name: phash_bits(photo(name)) for name in PHOTOS}
    for a, b in itertools.combinations(PHOTOS, 2):
        assert hamming(hashes[a], hashes[b]) > 16, (a, b, hamming(hashes[a], hashes[b]))


def test_hamming_raises_when_lengths_differ() -> None:
    with pytest.raises(ValueError):
        hamming("0101", "010")


# --- decoding an image file ----------------------------------------------------------------


def jpeg_bytes(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=90, **options)
    return out.getvalue()


def png_bomb(side: int = 30_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels, tiny on disk (all-zero rows compress well)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    row = b"\x00" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def write(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def test_decode_image_applies_exif_orientation_when_tag_is_6(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Canon"
    exif[0x0110] = "EOS R\x00"
    exif.get_ifd(0x8769)[0x9003] = "2024:01:02 03:04:05"
    exif.get_ifd(0x8825)[1] = "N"
    path = write(tmp_path, "rotated.jpg", jpeg_bytes(Image.new("RGB", (40, 20), "red"), exif=exif))
    decoded = decode_image(path, CLIP)
    assert (decoded.width, decoded.height, decoded.format) == (20, 40, "JPEG")
    assert decoded.exif == {
        "make": "Canon", "model": "EOS R", "datetime": "2024:01:02 03:04:05",
        "orientation": 6, "gps": True,
    }  # fmt: skip


def test_decode_image_returns_facts_thumbnail_hash_and_input_when_photo_is_good(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "coffee.jpg", jpeg_bytes(photo("coffee")))
    decoded = decode_image(path, CLIP)
    assert (decoded.width, decoded.height, decoded.format) == (600, 400, "JPEG")
    assert decoded.exif == {"gps": False}
    thumbnail = Image.open(io.BytesIO(decoded.thumbnail))
    assert thumbnail.format == "JPEG" and thumbnail.mode == "RGB"
    assert thumbnail.size == (256, 171)
    with Image.open(path) as reference:
        np.testing.assert_array_equal(decoded.pixels, to_model_input(reference, CLIP))
        assert decoded.phash == phash_bits(reference)


def big_photo() -> Image.Image:
    """A real photo of 1400x1000: large enough for a JPEG to decode at 1/4 scale for CLIP."""
    return photo("retina").crop((0, 200, 1400, 1200))


@pytest.mark.parametrize(
    ("short", "long", "expected"),
    [
        (224, 256, (350, 250)),  # 1/4: 1/8 would leave a short side of 125
        (260, 256, (700, 500)),  # 1/2: 1/4 would leave 250 < 260
        (224, 600, (700, 500)),  # the thumbnail's long side decides
        (600, 256, (1400, 1000)),  # no reduction leaves 600: full size
    ],
)
def test_reduce_on_load_keeps_the_sides_asked_for_when_jpeg_is_large(
    tmp_path: Path, short: int, long: int, expected: tuple[int, int]
) -> None:
    path = write(tmp_path, "big.jpg", jpeg_bytes(big_photo()))
    with Image.open(path) as image:
        reduce_on_load(image, short, long)
        image.load()
        assert image.size == expected


@pytest.mark.parametrize("orientation", [1, 6])
def test_decode_image_reduces_a_large_jpeg_on_load_and_reports_its_full_size(
    tmp_path: Path, orientation: int
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = write(tmp_path, "big.jpg", jpeg_bytes(big_photo(), exif=exif))
    decoded = decode_image(path, CLIP)
    turned = orientation == 6
    assert (decoded.width, decoded.height) == ((1000, 1400) if turned else (1400, 1000))
    thumbnail = Image.open(io.BytesIO(decoded.thumbnail)).size
    assert thumbnail == ((183, 256) if turned else (256, 183))
    with Image.open(path) as opened:  # every pixel decoded, then resized: the slow way
        full = ImageOps.exif_transpose(opened)
        reference = to_model_input(full, CLIP)
        assert hamming(decoded.phash, phash_bits(full)) <= 2
    assert not np.array_equal(decoded.pixels, reference)  # it did decode at reduced scale
    levels = np.abs(decoded.pixels - reference) * np.asarray(CLIP_STD, np.float32)[:, None, None]
    assert levels.mean() * 255 < 1.5  # 0.5 measured: what a JPEG re-encode also moves


def test_decode_image_composites_on_white_when_png_is_transparent(tmp_path: Path) -> None:
    clear = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    out = io.BytesIO()
    clear.save(out, format="PNG")
    decoded = decode_image(write(tmp_path, "clear.png", out.getvalue()), CLIP)
    white = (1 - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    np.testing.assert_allclose(decoded.pixels[:, 100, 100], white, rtol=1e-6)
    assert max(Image.open(io.BytesIO(decoded.thumbnail)).size) == 256


def test_decode_image_takes_first_frame_when_gif_is_animated(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (64, 32), colour) for colour in ("blue", "yellow", "green")]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    decoded = decode_image(write(tmp_path, "anim.gif", out.getvalue()), CLIP)
    assert (decoded.width, decoded.height, decoded.format) == (64, 32, "GIF")
    np.testing.assert_array_equal(decoded.pixels, to_model_input(frames[0], CLIP))


def halves(size: tuple[int, int] = (64, 32)) -> Image.Image:
    """Left half red, right half blue: which way it was turned shows."""
    image = Image.new("RGB", size, "blue")
    image.paste((220, 0, 0), (0, 0, size[0] // 2, size[1]))
    return image


def saved(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def test_decode_image_turns_heic_upright_as_it_does_the_same_jpeg(tmp_path: Path) -> None:
    # A phone photo taken sideways: EXIF orientation 6 (turn 90 degrees clockwise to view).
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = decode_image(write(tmp_path, "side.jpg", jpeg_bytes(halves(), exif=exif)), CLIP)
    # pillow-heif writes it as phones do: the turn in the file's own rotation box (irot),
    # which readers apply, and EXIF orientation beside it, which they must then ignore.
    heic_bytes = saved(halves(), "HEIF", exif=exif.tobytes())
    heic = decode_image(write(tmp_path, "side.heic", heic_bytes), CLIP)
    assert (heic.width, heic.height, heic.format) == (jpeg.width, jpeg.height, "HEIF")
    assert (heic.width, heic.height) == (32, 64)
    # The same picture, the right way up: red on top after the turn, in both.
    for decoded in (jpeg, heic):
        thumb = np.asarray(Image.open(io.BytesIO(decoded.thumbnail)).convert("RGB"), np.int32)
        top, bottom = (
            thumb[: thumb.shape[0] // 4].mean((0, 1)),
            thumb[-thumb.shape[0] // 4 :].mean((0, 1)),
        )
        assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0], (decoded.format, top, bottom)


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_decode_image_reads_avif_and_heif(tmp_path: Path, fmt: str) -> None:
    source = photo("coffee")
    decoded = decode_image(
        write(tmp_path, f"coffee.{fmt.lower()}", saved(source, fmt, quality=90)), CLIP
    )
    assert (decoded.width, decoded.height, decoded.format) == (*source.size, fmt)
    assert hamming(decoded.phash, phash_bits(source.convert("RGB"))) <= 6  # the same photo


@pytest.mark.parametrize("fmt", ["WEBP", "PNG"])
def test_decode_image_takes_first_frame_when_webp_or_png_is_animated(
    tmp_path: Path, fmt: str
) -> None:
    frames = [Image.new("RGB", (64, 32), colour) for colour in ("blue", "yellow", "green")]
    options = {"lossless": True} if fmt == "WEBP" else {}
    content = saved(
        frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **options
    )
    decoded = decode_image(write(tmp_path, f"anim.{fmt.lower()}", content), CLIP)
    assert (decoded.width, decoded.height, decoded.format) == (64, 32, fmt)
    np.testing.assert_allclose(decoded.pixels, to_model_input(frames[0], CLIP), atol=1e-5)


def corrupt_png() -> bytes:
    """A real PNG with 64 bytes of its compressed pixels zeroed."""
    out = io.BytesIO()
    photo("chelsea").save(out, format="PNG")
    good = out.getvalue()
    return good[:400] + bytes(64) + good[464:]


BAD_IMAGES: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty.jpg": (lambda: b"", "empty file"),
    "truncated.jpg": (lambda: jpeg_bytes(photo("astronaut"))[:20_000], "truncated image file"),
    "random.jpg": (
        lambda: np.random.default_rng(3).bytes(50_000),
        "unsupported or unrecognised image format",
    ),
    "notes.txt": (lambda: b"just some text\n" * 100, "unsupported or unrecognised image format"),
    "bomb.png": (png_bomb, "image too large"),
    "corrupt.png": (corrupt_png, "corrupt image data"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_decode_image_raises_decode_error_when_file_is_bad(tmp_path: Path, name: str) -> None:
    make, message = BAD_IMAGES[name]
    content = make()
    assert name != "bomb.png" or len(content) < 200_000  # tiny on disk, 900 Mpixel declared
    with pytest.raises(DecodeError, match=message):
        decode_image(write(tmp_path, name, content), CLIP)


def test_decode_image_raises_decode_error_when_pixels_exceed_a_custom_limit(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "big.jpg", jpeg_bytes(photo("coffee")))
    with pytest.raises(DecodeError, match=r"image too large: .*240000 pixels"):
        decode_image(path, CLIP, max_pixels=200_000)
    assert Image.MAX_IMAGE_PIXELS != 200_000  # Pillow's global is restored


# --- decoding a video file -----------------------------------------------------------------


def make_video(path: Path, *, seconds: int = 2, fps: int = 25, gop: int = 12) -> None:
    """An MPEG-4 clip whose colour changes every frame, with a keyframe every `gop` frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = gop
        for i in range(seconds * fps):
            pixels = np.zeros((48, 64, 3), dtype=np.uint8)
            pixels[..., 0] = i * 5
            pixels[:, : 1 + i, 1] = 255
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@pytest.mark.parametrize(("gop", "expected"), [(5, 8), (12, 8), (100, 8)])
def test_decode_video_samples_frames_when_keyframes_are_many_or_few(
    tmp_path: Path, gop: int, expected: int
) -> None:
    path = tmp_path / "clip.mp4"
    make_video(path, gop=gop)
    video = decode_video(str(path), CLIP, max_frames=8)
    assert (video.width, video.height, video.codec) == (64, 48, "mpeg4")
    assert "mp4" in video.format and video.duration == pytest.approx(2.0, abs=0.05)
    times = [t for t, _ in video.frames]
    assert len(times) == expected and times == sorted(times) and times[0] == 0.0
    assert 0 <= times[-1] < 2.0
    assert all(pixels.shape == (3, 224, 224) for _, pixels in video.frames)
    if gop == 5:  # ten keyframes: the samples are keyframes, at multiples of 0.2 s
        assert all(round(t / 0.2, 6) == round(t / 0.2) for t in times)
    assert Image.open(io.BytesIO(video.thumbnail)).size == (64, 48)
    assert len(video.phash) == 64
    keyframes = decode_video_keyframes(str(path), CLIP, max_frames=3)
    assert [round(t, 6) for t, _ in keyframes] == sorted({round(t, 6) for t, _ in keyframes})
    assert len(keyframes) == 3


def test_decode_video_turns_frames_upright_when_display_matrix_says_rotated(
    tmp_path: Path,
) -> None:
    path = tmp_path / "portrait.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(90)  # as phones record portrait video
        pixels = np.zeros((48, 64, 3), dtype=np.uint8)
        pixels[:, :32, 0] = 255  # left half red
        for _ in range(5):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))
    video = decode_video(str(path), CLIP)
    assert (video.width, video.height) == (48, 64)
    # 90 degrees counter-clockwise (ffmpeg's convention): the left half ends at the bottom.
    thumbnail = np.asarray(Image.open(io.BytesIO(video.thumbnail)), dtype=np.float32)
    assert thumbnail[-8:, :, 0].mean() > 200 and thumbnail[:8, :, 0].mean() < 50


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty file"), (b"\x00\x01garbage" * 1000, "corrupt or unsupported video")],
)
def test_decode_video_raises_decode_error_when_file_is_bad(
    tmp_path: Path, content: bytes, message: str
) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_video(write(tmp_path, "bad.mp4", content), CLIP)


# --- text tokens ---------------------------------------------------------------------------

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def tiny_clip_tokenizer(path: Path) -> None:
    """A small BPE tokenizer with CLIP's normaliser, pre-tokeniser and special tokens."""
    tokenizer = Tokenizer(
        BPE(unk_token=EOS, continuing_subword_prefix="", end_of_word_suffix="</w>")
    )
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    clip_split = (
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"""
        r"""|[^\s\p{L}\p{N}]+"""
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(clip_split), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    corpus = [
        "a photo of a cat", "a black cat sleeping on a sofa", "two dogs playing in the snow",
        "a red car parked on the street", "a photograph of the mountains at sunset",
    ]  # fmt: skip
    tokenizer.train_from_iterator(corpus * 5, trainer)
    bos, eos = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos), (EOS, eos)]
    )
    tokenizer.save(str(path))


def test_text_tokenizer_matches_transformers_clip_tokenizer_when_short_long_or_empty(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokenizer.json"
    tiny_clip_tokenizer(path)
    # transformers 5 folded CLIPTokenizerFast into CLIPTokenizer (the old name is an alias).
    reference = transformers.CLIPTokenizer(tokenizer_file=str(path))
    texts = [
        "a photo of a cat", "", "A BLACK  cat\ton a Sofa!!", "two dogs playing in the snow " * 10,
        "émoji 🐈 ok", "it's a dog's life",
    ]  # fmt: skip
    length = 16
    ids, mask = TextTokenizer(path).encode_batch(texts, length, reference.pad_token_id)
    expected = reference(
        texts, padding="max_length", truncation=True, max_length=length, return_tensors="np"
    )
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape == (6, length)
    np.testing.assert_array_equal(ids, expected["input_ids"])
    np.testing.assert_array_equal(mask, expected["attention_mask"])
    assert ids[3, -1] == reference.eos_token_id and mask[3].all()  # truncated, still ends in EOS
    assert ids[1, :2].tolist() == [reference.bos_token_id, reference.eos_token_id]
    assert mask[1].sum() == 2
