"""NVFlare provisioning and the FLARE API client wrapper (imported lazily: not at operator start)."""
