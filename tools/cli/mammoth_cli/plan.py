"""What `mammoth ingest` sends: the files under the paths given, less what `.mammothignore`
files and the type filter leave out, in a fixed order and fixed batches, each batch with an
idempotency key made from its files' paths and contents. Pure but for reading the tree.

The key is what makes a re-run after an interruption upload only what is missing: a batch
the gateway committed before the interruption has the same key the second time, and the
gateway answers it with the original 202 instead of storing it again. Batches are the same
when the files, their order and `--batch` are: the walk is sorted and the key covers the
request's other fields too (owner, collection, comments).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

IGNORE_FILE = ".mammothignore"
# What the gateway accepts, by the names such files have (it sniffs the bytes itself).
_IMAGES = ".jpg .jpeg .png .apng .gif .webp .bmp .tif .tiff .heic .heif .avif"
EXTENSIONS: dict[str, frozenset[str]] = {
    "image": frozenset(_IMAGES.split()),
    "video": frozenset(".mp4 .m4v .mov .webm .mkv .avi".split()),
    "json": frozenset({".json"}),
}
KINDS = tuple(EXTENSIONS)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class LocalFile:
    path: Path  # as found under the root given
    size: int
    sha256: str
    data: bytes | None = None  # the bytes of a small file, read once for hash and upload


@dataclass
class Walk:
    """The files to send, and how many were left out and why."""

    files: list[Path] = field(default_factory=list)
    ignored: int = 0
    other_types: int = 0


def kind_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return next((k for k, names in EXTENSIONS.items() if suffix in names), None)


def _spec(directory: Path) -> pathspec.GitIgnoreSpec | None:
    ignore = directory / IGNORE_FILE
    if not ignore.is_file():
        return None
    return pathspec.GitIgnoreSpec.from_lines(ignore.read_text(errors="replace").splitlines())


def _ignored(specs: list[tuple[Path, pathspec.GitIgnoreSpec]], path: Path, is_dir: bool) -> bool:
    """gitignore's rule: each ignore file speaks of the paths under its own folder."""
    for base, spec in specs:
        relative = path.relative_to(base).as_posix() + ("/" if is_dir else "")
        if spec.match_file(relative):
            return True
    return False


def walk(paths: Iterable[Path], kinds: Iterable[str] = KINDS, use_ignore: bool = True) -> Walk:
    """Every file under `paths` (files named directly are taken as they are, whatever their
    type), sorted, following no symbolic links to folders; `.mammothignore` files apply to
    their folder and below, with gitignore's syntax."""
    wanted = set(kinds)
    found = Walk()
    for root in paths:
        if root.is_file():
            found.files.append(root)
            continue
        stack: list[tuple[Path, list[tuple[Path, pathspec.GitIgnoreSpec]]]] = [(root, [])]
        while stack:
            directory, inherited = stack.pop()
            specs = list(inherited)
            if use_ignore and (spec := _spec(directory)) is not None:
                specs.append((directory, spec))
            entries = sorted(os.scandir(directory), key=lambda e: e.name, reverse=True)
            for entry in entries:
                path = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    if _ignored(specs, path, is_dir=True):
                        found.ignored += 1
                    else:
                        stack.append((path, specs))
                elif entry.is_file() and entry.name != IGNORE_FILE:
                    if _ignored(specs, path, is_dir=False):
                        found.ignored += 1
                    elif kind_of(path) not in wanted:
                        found.other_types += 1
                    else:
                        found.files.append(path)
    found.files.sort(key=lambda p: p.as_posix())
    return found


def describe(path: Path, keep_below: int = 0) -> LocalFile:
    """Size and sha256 of a file, read in chunks; a file smaller than `keep_below` bytes is
    kept in memory for its upload (one read instead of two, and no streaming from disk)."""
    digest = hashlib.sha256()
    chunks = []
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if size < keep_below:
                chunks.append(chunk)
    data = b"".join(chunks) if size < keep_below else None
    return LocalFile(path, size, digest.hexdigest(), data)


def batches(files: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(files), size):
        yield files[start : start + size]


def idempotency_key(files: list[LocalFile], fields: dict[str, str]) -> str:
    """The same files (by absolute path and content) with the same fields: the same key."""
    digest = hashlib.sha256()
    for name, value in sorted(fields.items()):
        digest.update(f"{name}={value}\0".encode())
    for f in files:
        digest.update(f"{f.path.resolve().as_posix()}\0{f.sha256}\0".encode())
    return f"mammoth-{digest.hexdigest()}"
