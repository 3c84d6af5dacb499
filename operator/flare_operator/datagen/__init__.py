"""Synthetic, non-IID protein localisation data for demos, tests and benchmarks (no torch)."""

from .generator import (
    LOCATION_CLASSES,
    GeneratorConfig,
    dirichlet_split,
    generate,
    public_corpus,
    write_dataset,
)

__all__ = ["LOCATION_CLASSES", "GeneratorConfig", "dirichlet_split", "generate", "public_corpus", "write_dataset"]
