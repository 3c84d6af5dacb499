"""Thin Kopf glue: parse with api/, call pure code, apply through runtime/, patch status."""
