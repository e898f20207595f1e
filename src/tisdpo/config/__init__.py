"""The config layer: every command's flags as dataclasses, and the one validator of their values.

* :mod:`tisdpo.config.parsing`: :func:`parse_config` (flags and ``--config`` YAML) and :func:`check_values`
  (a mapping of settings, such as a pipeline recipe's section, checked with the same code);
* :mod:`tisdpo.config.training`: the model, data and training flags (``train``, ``evaluate`` ...);
* :mod:`tisdpo.config.weights`: the flags of ``tisdpo weights`` and their weight transform;
* :mod:`tisdpo.config.generation`: the flags of ``tisdpo evaluate --generate``;
* :mod:`tisdpo.config.commands`: the flags of ``dlma generate``, ``visualize``, ``compare``, ``pipeline``
  and ``demo``.
"""

from tisdpo.config.commands import (
    CompareArguments,
    DemoArguments,
    DlmaArguments,
    PipelineArguments,
    RealTourArguments,
    VisualizeArguments,
)
from tisdpo.config.generation import GenerationArguments
from tisdpo.config.parsing import (
    ArgumentParser,
    check_keys,
    check_values,
    extract_config_flag,
    field_names,
    load_yaml_config,
    parse_config,
)
from tisdpo.config.training import LOSS_TYPES, DataArguments, ModelArguments, TisdpoConfig
from tisdpo.config.weights import TRANSFORM_FLAGS, WeightsArguments, transform_config

__all__ = [
    "LOSS_TYPES",
    "TRANSFORM_FLAGS",
    "ArgumentParser",
    "CompareArguments",
    "DataArguments",
    "DemoArguments",
    "DlmaArguments",
    "GenerationArguments",
    "ModelArguments",
    "PipelineArguments",
    "RealTourArguments",
    "TisdpoConfig",
    "VisualizeArguments",
    "WeightsArguments",
    "check_keys",
    "check_values",
    "extract_config_flag",
    "field_names",
    "load_yaml_config",
    "parse_config",
    "transform_config",
]
