"""Metrics of the storage port, for every backend."""

from prometheus_client import Counter

OBJECTS_WRITTEN = Counter(
    "storage_objects_written_total",
    "Content objects given their name: stored (bytes written) or present (the same content"
    " was there already, nothing written).",
    ["backend", "outcome"],
)
