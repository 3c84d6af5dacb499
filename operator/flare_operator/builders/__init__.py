"""Pure builders: typed specs in, manifests / NVFlare projects / NVFlare jobs out. No I/O, no kopf."""
