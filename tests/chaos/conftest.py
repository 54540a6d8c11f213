"""The chaos suite runs a system of its own on this run's database server and broker, and
restarts both: scripts/test.sh runs it in a pytest run of its own, after the other tests."""

from tests.clusterer.conftest import colour_models  # noqa: F401
