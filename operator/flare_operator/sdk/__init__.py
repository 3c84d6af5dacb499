"""Python SDK for modellers and data owners (never imports kopf)."""
