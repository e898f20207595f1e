"""The Python API: what the ``tisdpo`` commands run, callable on data in memory (exported from ``tisdpo``).

* :class:`TISDPOTrainer` and :class:`TISDPOConfig`: training, in TRL's ``DPOTrainer`` / ``DPOConfig`` shape;
* :func:`estimate_weights`, :func:`load_weights`, :func:`save_weights`: token weights (``tisdpo weights``);
* :func:`evaluate_preferences` (``tisdpo evaluate``) and :func:`render_heatmaps` (``tisdpo visualize``).
"""

from tisdpo.api.evaluation import evaluate_preferences, generate_and_score
from tisdpo.api.report import render_heatmaps
from tisdpo.api.trainer import PreferenceData, TISDPOTrainer, lora_config
from tisdpo.api.weights import WeightedRows, estimate_weights, load_weights, save_weights
from tisdpo.config.trainer import TISDPOConfig
from tisdpo.weights.transforms import WeightTransformConfig

__all__ = [
    "PreferenceData",
    "TISDPOConfig",
    "TISDPOTrainer",
    "WeightTransformConfig",
    "WeightedRows",
    "estimate_weights",
    "evaluate_preferences",
    "generate_and_score",
    "load_weights",
    "lora_config",
    "render_heatmaps",
    "save_weights",
]
