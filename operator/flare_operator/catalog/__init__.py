"""App catalog (``flare_apps/``): list apps, load and validate app.yaml, validate parameters.

Pure: imports neither torch nor nvflare. The catalog root is the repository's ``flare_apps/``
unless ``$FLARE_APPS_DIR`` (or an explicit ``root``) says otherwise.
"""

from .loader import (
    ENV_VAR,
    App,
    CatalogError,
    ParamError,
    ParameterError,
    apply_defaults,
    catalog_root,
    list_apps,
    load_app,
    load_app_dir,
    shared_dir,
    validate_params,
)
from .privacy import composed_epsilon, expected_epsilon, noise_multiplier_for_epsilon
from .schemas import AGGREGATION_SCHEMA, PRIVACY_SCHEMA, validate_aggregation, validate_privacy

__all__ = [
    "AGGREGATION_SCHEMA",
    "ENV_VAR",
    "PRIVACY_SCHEMA",
    "App",
    "CatalogError",
    "composed_epsilon",
    "ParamError",
    "ParameterError",
    "apply_defaults",
    "catalog_root",
    "expected_epsilon",
    "list_apps",
    "load_app",
    "load_app_dir",
    "noise_multiplier_for_epsilon",
    "shared_dir",
    "validate_aggregation",
    "validate_params",
    "validate_privacy",
]
