"""tisdpo: Direct Preference Optimization with estimated token-level importance weights.

    from tisdpo import TISDPOConfig, TISDPOTrainer, estimate_weights

The Python API (:mod:`tisdpo.api`, docs/python-api.md); the command line (``tisdpo train``, ``tisdpo weights``
...) runs the same functions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tisdpo.version import __version__

if TYPE_CHECKING:
    from tisdpo.api import (
        PreferenceData,
        TISDPOConfig,
        TISDPOTrainer,
        WeightedRows,
        WeightTransformConfig,
        estimate_weights,
        evaluate_preferences,
        generate_and_score,
        load_weights,
        lora_config,
        render_heatmaps,
        save_weights,
    )

__all__ = [
    "PreferenceData",
    "TISDPOConfig",
    "TISDPOTrainer",
    "WeightTransformConfig",
    "WeightedRows",
    "__version__",
    "estimate_weights",
    "evaluate_preferences",
    "generate_and_score",
    "load_weights",
    "lora_config",
    "render_heatmaps",
    "save_weights",
]
API_NAMES = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    # The API is imported on first use, not with the package: every `tisdpo.*` import runs this file, and
    # `tisdpo --help` or a mistyped command must answer without loading torch and transformers (seconds).
    if name in API_NAMES:
        return getattr(importlib.import_module("tisdpo.api"), name)
    raise AttributeError(f"module 'tisdpo' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *API_NAMES})
