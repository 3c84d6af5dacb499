"""The chaos tier trains on the e2e tier's generated data."""

from tests.e2e.conftest import e2e_data  # noqa: F401 - the fixture, shared
