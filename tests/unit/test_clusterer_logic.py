"""The clusterer's pure decisions, settings and the command models."""

from __future__ import annotations

import os
import uuid

import pytest
from pydantic import TypeAdapter, ValidationError

from clusterer.logic import (
    Candidate,
    choose,
    clean_name,
    link_name,
    unique_name,
    untitled_name,
)
from clusterer.settings import ClustererSettings
from common.cluster_commands import Change, Merge, Rename, UpdateThreshold


def test_choose_takes_the_most_similar_passing_cluster_when_thresholds_differ() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    candidates = [Candidate(a, 0.90, 0.95), Candidate(b, 0.80, 0.72), Candidate(c, 0.85, 0.72)]
    assert choose(candidates) == candidates[2]
    assert choose([Candidate(a, 0.71, 0.72)]) is None
    assert choose([Candidate(a, 0.72, 0.72)]) is not None  # reaching the threshold is enough
    assert choose([]) is None


def test_unique_name_adds_the_first_free_number_when_taken() -> None:
    assert unique_name("cat", set()) == "cat"
    assert unique_name("cat", {"cat"}) == "cat 2"
    assert unique_name("cat", {"cat", "cat 2", "cat 3"}) == "cat 4"
    long = "x" * 200
    assert unique_name(long, {long}) == "x" * 198 + " 2"


def test_clean_name_collapses_whitespace_and_refuses_empty_names() -> None:
    assert clean_name("  Sunny \n\t things ") == "Sunny things"
    assert clean_name("   ") is None and clean_name(None) is None
    assert len(clean_name("y" * 5000) or "") == 200


@pytest.mark.parametrize(
    ("filename", "mime", "suffix"),
    [
        ("cat.jpg", "image/jpeg", "_cat.jpg"),
        ("../../etc/passwd", "image/png", "_etc_passwd"),
        ("..", "image/png", ".png"),
        (None, "video/mp4", ".mp4"),
        ("ünïcødé name.png", "image/png", "_n_c_d_name.png"),
        ("a/b\\c\x00d.png", "image/png", "_a_b_c_d.png"),
        ("", "application/x-unknown", ""),
    ],
)
def test_link_name_is_safe_and_unique_per_upload_when_filename_is_hostile(
    filename: str | None, mime: str, suffix: str
) -> None:
    upload_id = uuid.uuid4()
    name = link_name(upload_id, filename, mime)
    assert name == f"{upload_id}{suffix}"
    assert "/" not in name and "\\" not in name and "\x00" not in name and len(name) <= 117


def test_untitled_name_shows_the_cluster_id_when_no_label_can_be_had() -> None:
    cluster_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert untitled_name(cluster_id) == "untitled 12345678"


def test_settings_parse_labels_and_know_when_threshold_is_explicit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in list(os.environ):
        if key.startswith("CLUSTER_"):
            monkeypatch.delenv(key)
    settings = ClustererSettings()
    assert settings.cluster_threshold == 0.72 and not settings.threshold_is_explicit
    monkeypatch.setenv("CLUSTER_THRESHOLD", "0.8")
    monkeypatch.setenv("CLUSTER_LABELS", " cat, dog ,,bird ")
    settings = ClustererSettings()
    assert settings.threshold_is_explicit and settings.cluster_labels == ("cat", "dog", "bird")
    for name, value in (
        ("CLUSTER_THRESHOLD", "1.5"),
        ("CLUSTER_LABELS", " , "),
        ("CLUSTER_LABEL_TEMPLATE", "no slot"),
    ):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError):
            ClustererSettings()
        monkeypatch.delenv(name)


def test_cluster_changes_validate_when_parsed() -> None:
    adapter: TypeAdapter[Change] = TypeAdapter(Change)
    assert adapter.validate_python({"action": "rename", "name": "  Cats "}) == Rename(
        action="rename", name="Cats"
    )
    source = uuid.uuid4()
    merge = adapter.validate_python({"action": "merge", "source_ids": [str(source)]})
    assert isinstance(merge, Merge) and merge.source_ids == [source]
    change = adapter.validate_python({"action": "update_threshold", "threshold": 1})
    assert isinstance(change, UpdateThreshold) and not change.reevaluate
    for bad in (
        {"action": "update_threshold", "threshold": 0},
        {"action": "merge", "source_ids": [str(uuid.uuid4())] * 101},
        {"action": "rename", "name": "ok", "also": 1},
        {"name": "no action"},
        "rename",
    ):
        with pytest.raises(ValidationError):
            adapter.validate_python(bad)


@pytest.mark.parametrize("threshold", [1e-300, 5e-324, 1e-39, 0.0, -0.1, 1.5, float("nan")])
def test_update_threshold_refuses_values_when_a_real_column_cannot_hold_them(
    threshold: float,
) -> None:
    with pytest.raises(ValidationError):
        UpdateThreshold(action="update_threshold", threshold=threshold)
    assert UpdateThreshold(action="update_threshold", threshold=2e-38).threshold == 2e-38
