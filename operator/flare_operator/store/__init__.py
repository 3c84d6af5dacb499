"""Stores for what finished jobs leave behind (results: a local folder or an S3-compatible bucket)."""

from .results import (
    LocalStore,
    ResultsCorrupt,
    ResultsStore,
    ResultsStoreError,
    S3Store,
    store_from_config,
)

__all__ = [
    "LocalStore",
    "ResultsCorrupt",
    "ResultsStore",
    "ResultsStoreError",
    "S3Store",
    "store_from_config",
]
