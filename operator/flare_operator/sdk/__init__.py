"""Python SDK for modellers and data owners: `compute`, `job`, `owner` (approve, reject, pending,
budget), over the flareop.io custom resources with the caller's own kubeconfig identity. Installed with
`pip install 'flare-operator[sdk]'`; never imports kopf, torch or NVFlare. `flareop` is its CLI."""
