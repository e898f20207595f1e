"""tisdpo: Direct Preference Optimization with estimated token-level importance weights.

    from tisdpo import TISDPOConfig, TISDPOTrainer, estimate_weights

See docs/python-api.md; the command line (``tisdpo train``, ``tisdpo weights`` ...) runs the same functions.
"""

from tisdpo.api import (
    PreferenceData,
    TISDPOConfig,
    TISDPOTrainer,
    WeightedRows,
    WeightTransformConfig,
    estimate_weights,
    evaluate_preferences,
    load_weights,
    lora_config,
    render_heatmaps,
    save_weights,
)
from tisdpo.version import __version__

__all__ = [
    "PreferenceData",
    "TISDPOConfig",
    "TISDPOTrainer",
    "WeightTransformConfig",
    "WeightedRows",
    "__version__",
    "estimate_weights",
    "evaluate_preferences",
    "load_weights",
    "lora_config",
    "render_heatmaps",
    "save_weights",
]
