"""A pipeline recipe (YAML) and the stages it expands to.

    task? -> base? -> sft? -> contrastive pair per method (S: two SFTs, D: DPO + reverse DPO; P: none)
          -> weights per method (+ random) -> training per objective and seed -> evaluation -> report

The data, the base model and weights may also come from stage kinds that other packages register
(:mod:`tisdpo.pipeline.kinds`; the demo's task, tiny model and oracle weights are such kinds).

Every command runs in-process (``tisdpo.cli.main``), or through ``launcher`` (for example
``accelerate launch --config_file configs/accelerate/fsdp.yaml``) as a subprocess.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from typing import Any

from tisdpo.errors import UserError, did_you_mean
from tisdpo.pipeline.engine import Stage, StageContext
from tisdpo.pipeline.kinds import StageKind, is_stage_kind, known_kinds, stage_kind
from tisdpo.utils import file_identity, is_verbose

METHODS = ("P", "S", "D")
GENERIC_WEIGHTS = (*METHODS, "random")
DATA_FILE_KEYS = ("dataset_name", "eval_dataset_name", "prompts_dataset_name", "sft_dataset_name")
DATA_FILE_EXTENSIONS = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".parquet")


@dataclass
class Recipe:
    run_dir: str = "runs/pipeline"
    extensions: list[str] = field(default_factory=list)  # modules to import first: they register stage kinds
    launcher: str | None = None  # e.g. "accelerate launch --num_processes 8"; None = in-process
    seeds: list[int] = field(default_factory=lambda: [0])
    base_model: str | dict[str, Any] | None = None  # a hub id / folder, or {<base_model kind>: {...}}
    data: dict[str, Any] = field(
        default_factory=dict
    )  # dataset_name / eval_dataset_name / prompts_dataset_name / sft_dataset_name, or {<data kind>: {...}}
    data_args: dict[str, Any] = field(
        default_factory=dict
    )  # flags given to every command (max_length, prompt_template ...)
    model_args: dict[str, Any] = field(
        default_factory=dict
    )  # flags given to every command (dtype, attn_implementation ...)
    train_defaults: dict[str, Any] = field(default_factory=dict)  # flags given to every training stage
    sft: dict[str, Any] | None = None  # {args: {...}}; absent = the base model is already the SFT model
    contrastive: dict[str, Any] = field(
        default_factory=dict
    )  # {P: {positive_prompt, negative_prompt}, S: {args}, D: {args}}
    weights: dict[str, Any] = field(default_factory=dict)  # flags for `tisdpo weights` (transform ...)
    random_weights: bool = True  # also train TIS-DPO with random weights (the paper's ablation)
    dlma: dict[str, Any] | None = (
        None  # {positive_prompt, negative_prompt, args}: self-rewarded pairs for objectives with `data: dlma`
    )
    objectives: dict[str, dict[str, Any]] = field(default_factory=lambda: {"dpo": {"loss_type": "dpo"}})
    betas: list[float] | None = None  # train every objective at each beta: its frontier spans them all
    evaluate: dict[str, Any] | None = None  # {args: {...}, checkpoints: bool}
    report: bool = True
    notes: str = ""
    quick_overrides: dict[str, Any] = field(default_factory=dict)  # merged in by `tisdpo demo --quick`

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> Recipe:
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                raise UserError(f"unknown recipe key '{key}'{did_you_mean(key, known)}", source=source)
        recipe = cls(**values)
        recipe.load_extensions(source)
        recipe.validate(source)
        return recipe

    def load_extensions(self, source: str) -> None:
        """Import the modules the recipe names under ``extensions``: importing one registers its stage kinds."""
        for module in self.extensions:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as err:
                raise UserError(f"extension '{module}' cannot be imported ({err})", source=source) from None

    def data_kind(self, source: str) -> tuple[StageKind, Any] | None:
        """The data kind the recipe names (its one key that is not a data file's), with its spec."""
        named = [key for key in self.data if key not in DATA_FILE_KEYS]
        if not named:
            return None
        if len(named) > 1:
            raise UserError(f"the recipe's data names several kinds ({', '.join(named)}): name one", source=source)
        return stage_kind("data", named[0], source), self.data[named[0]]

    def base_model_kind(self, source: str) -> tuple[StageKind, Any] | None:
        """The base model kind the recipe names (``base_model: {kind: spec}``), with its spec."""
        if not isinstance(self.base_model, dict):
            return None
        if len(self.base_model) != 1:
            raise UserError("base_model must be a model name/folder or {kind: {...}}", source=source)
        ((name, spec),) = self.base_model.items()
        return stage_kind("base_model", name, source), spec

    def validate(self, source: str) -> None:
        if self.base_model is None:
            raise UserError("the recipe needs base_model (a hub id, a folder, or {kind: {...}})", source=source)
        self.base_model_kind(source)
        if self.data_kind(source) is None and not self.data.get("dataset_name"):
            raise UserError("the recipe's data needs dataset_name (or a data kind)", source=source)
        for method in self.contrastive:
            if method not in METHODS:
                raise UserError(f"unknown contrastive method '{method}' (expected P, S or D)", source=source)
        if "P" in self.contrastive and not {"positive_prompt", "negative_prompt"} <= set(self.contrastive["P"] or {}):
            raise UserError("contrastive P needs positive_prompt and negative_prompt", source=source)
        for name, objective in self.objectives.items():
            source_name = objective.get("weights")
            if source_name is not None and source_name not in GENERIC_WEIGHTS:
                kind = stage_kind("weights", source_name, source)
                unmet = kind.unmet_needs(self) if kind.unmet_needs else None
                if unmet:
                    raise UserError(f"objective '{name}' uses {source_name} weights: they need {unmet}", source=source)
            elif source_name in METHODS and source_name not in self.contrastive:
                raise UserError(
                    f"objective '{name}' uses weights '{source_name}', which is not a contrastive method of this recipe",
                    source=source,
                )
            if source_name == "random" and not (self.random_weights and self.contrastive):
                raise UserError(
                    f"objective '{name}' uses random weights: set random_weights and at least one contrastive method",
                    source=source,
                )
            if objective.get("data", "train") not in ("train", "dlma") or (
                objective.get("data") == "dlma" and self.dlma is None
            ):
                raise UserError(
                    f"objective '{name}' trains on data '{objective.get('data')}': use train, or dlma with a dlma section",
                    source=source,
                )
            if objective.get("loss_type") == "tisdpo" and source_name is None:
                raise UserError(
                    f"objective '{name}' is tisdpo and needs weights: "
                    + ", ".join([*GENERIC_WEIGHTS, *known_kinds("weights")]),
                    source=source,
                )
        if self.betas is not None and (
            not isinstance(self.betas, list)
            or not self.betas
            or any(isinstance(b, bool) or not isinstance(b, int | float) or b <= 0 for b in self.betas)
        ):
            raise UserError(
                f"betas must be a list of positive numbers, got {self.betas!r}", source=source, field="betas"
            )
        self.check_settings(source)
        self.check_inputs(source)

    def check_settings(self, source: str) -> None:
        """Every flag a section gives a command must be one of that command's flags, with a valid value:
        checked by the code that checks flags and ``--config`` files (:func:`tisdpo.config.check_values`),
        here, before any stage runs, rather than when the stage's command starts."""
        from tisdpo.config import (
            DataArguments,
            DlmaArguments,
            GenerationArguments,
            ModelArguments,
            TisdpoConfig,
            WeightsArguments,
            check_values,
        )

        train = [ModelArguments, DataArguments, TisdpoConfig]
        sections: list[tuple[str, Any, list[type]]] = [
            ("data_args", self.data_args, [DataArguments]),
            ("model_args", self.model_args, [ModelArguments]),
            ("train_defaults", self.train_defaults, train),
            ("weights", self.weights, [ModelArguments, DataArguments, WeightsArguments]),
        ]
        if self.sft is not None:
            sections.append(("sft.args", (self.sft or {}).get("args") or {}, train))
        for method in ("S", "D"):
            if self.contrastive.get(method):
                sections.append((f"contrastive.{method}.args", self.contrastive[method].get("args") or {}, train))
        if self.dlma is not None:
            sections.append(
                ("dlma.args", (self.dlma or {}).get("args") or {}, [ModelArguments, DataArguments, DlmaArguments])
            )
        for name, objective in self.objectives.items():
            own = {k: v for k, v in objective.items() if k not in ("weights", "args", "data")}
            sections.append((f"objectives.{name}", own, train))
            sections.append((f"objectives.{name}.args", objective.get("args") or {}, train))
        if self.evaluate is not None:
            sections.append(("evaluate.args", self.evaluate.get("args") or {}, [*train, GenerationArguments]))
        for section, values, types in sections:
            if isinstance(values, dict):
                for key in values:
                    if key in GGUF_FLAGS:
                        raise UserError(
                            f"'{key}' would apply to every stage's model; name a GGUF model by its file's path "
                            "instead (base_model: folder/model.gguf)",
                            source=source,
                            field=section,
                        )
            check_values(values, types, source, section)

    def check_inputs(self, source: str) -> None:
        """Local models and data files the recipe names must exist (hub names are checked when loaded)."""
        from tisdpo.modeling import looks_local

        if isinstance(self.base_model, str) and looks_local(self.base_model) and not os.path.exists(self.base_model):
            what = "GGUF file" if self.base_model.lower().endswith(".gguf") else "model folder"
            raise UserError(f"{what} not found: {self.base_model}", source=source, field="base_model")
        for key in ("dataset_name", "eval_dataset_name", "prompts_dataset_name", "sft_dataset_name"):
            value = self.data.get(key)
            if not isinstance(value, str):
                continue
            local = looks_local(value) or value.lower().endswith(DATA_FILE_EXTENSIONS)
            if local and not os.path.exists(value):
                raise UserError(f"file not found: {value}", source=source, field=f"data.{key}")


GGUF_FLAGS = ("gguf_file", "ref_gguf_file")


def to_flags(args: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for key, value in args.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            flags += [f"--{key}", *map(str, value)]
        else:
            flags += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


def invoke(command: str, args: dict[str, Any], launcher: str | None, stage: str) -> None:
    """Run one tisdpo command in-process or through the launcher; a failure names the stage."""
    argv = [*command.split(), *to_flags(args)]
    if launcher:
        verbose = ["--verbose"] if is_verbose() else []
        result = subprocess.run([*shlex.split(launcher), "-m", "tisdpo", *argv, *verbose], check=False)
        code = result.returncode
    else:
        from tisdpo.cli import run_command

        try:
            run_command(argv[0], argv[1:])
        except UserError as err:  # one line: the stage, the command, and what went wrong
            raise UserError(f"stage '{stage}' failed: tisdpo {command}: {err.format()}") from err
        return
    if code != 0:
        raise UserError(f"stage '{stage}' failed: `tisdpo {' '.join(shlex.quote(a) for a in argv)}` exited with {code}")


@dataclass
class Ref:
    """A path that is either external or a file inside an upstream stage's folder."""

    stage: str | None
    path: str

    def resolve(self, ctx: StageContext) -> str:
        return os.path.join(ctx.inputs[self.stage], self.path) if self.stage else self.path

    def identity(self) -> Any:
        return {"stage": self.stage, "path": self.path} if self.stage else file_identity(self.path)

    @property
    def deps(self) -> list[str]:
        return [self.stage] if self.stage else []


class StageBuilder:
    """Expands a recipe into stages."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.stages: list[Stage] = []
        # The data kind's measure of how well estimated token rewards match its truth (None: no truth known).
        self.weight_metric: Any = None

    def add(self, name: str, action, config: dict[str, Any], deps: list[str], description: str) -> None:
        self.stages.append(Stage(name, action, config, sorted(set(deps)), description))

    def command_stage(
        self,
        name: str,
        command: str,
        args: dict[str, Any],
        refs: dict[str, Ref],
        output_flag: str,
        output_name: str | None,
        description: str,
    ) -> None:
        """A stage that runs ``tisdpo <command>`` with ``args`` plus paths resolved from ``refs``."""
        launcher = self.recipe.launcher

        def action(ctx: StageContext) -> None:
            resolved = {key: ref.resolve(ctx) for key, ref in refs.items()}
            output = os.path.join(ctx.work_dir, output_name) if output_name else ctx.work_dir
            invoke(command, {**args, **resolved, output_flag: output}, launcher, name)

        config = {"command": command, "args": args, "inputs": {k: r.identity() for k, r in refs.items()}}
        self.add(name, action, config, [d for r in refs.values() for d in r.deps], description)

    def build(self) -> list[Stage]:
        recipe = self.recipe
        data = self._data_refs()
        base = self._base_model()
        common = {**recipe.model_args, **recipe.data_args}
        train_common = {**common, **recipe.train_defaults}
        start = base
        if recipe.sft is not None:
            sft_data = data.get("sft", data["train"])
            self.command_stage(
                "sft",
                "train",
                {**train_common, **recipe.sft.get("args", {}), "loss_type": "sft"},
                {"model_name_or_path": base, "dataset_name": sft_data},
                "output_dir",
                None,
                "supervised fine-tuning of the base model",
            )
            start = Ref("sft", "")
        weights = self._weights(start, data, train_common, common)
        if recipe.dlma is not None:
            spec = recipe.dlma
            args = {
                **common,
                **spec.get("args", {}),
                "positive_prompt": spec.get("positive_prompt", "dlma_harmless"),
                "negative_prompt": spec.get("negative_prompt", "dlma_harmful"),
            }
            self.command_stage(
                "dlma_pairs",
                "dlma generate",
                args,
                {"model_name_or_path": start, "dataset_name": data["train"]},
                "output_file",
                "pairs.jsonl",
                "DLMA: self-rewarded pairs sampled from the SFT model",
            )
            data = {**data, "dlma": Ref("dlma_pairs", "pairs.jsonl")}
        self._objectives(start, data, weights, train_common, common)
        return self.stages

    def _data_refs(self) -> dict[str, Ref]:
        recipe = self.recipe
        named = recipe.data_kind("recipe")
        if named is not None:
            kind, spec = named
            self.weight_metric = kind.weight_metric
            return kind.add(self, spec)
        refs = {"train": Ref(None, recipe.data["dataset_name"])}
        for key, name in (
            ("eval_dataset_name", "eval"),
            ("prompts_dataset_name", "prompts"),
            ("sft_dataset_name", "sft"),
        ):
            if recipe.data.get(key):
                refs[name] = Ref(None, recipe.data[key])
        return refs

    def _base_model(self) -> Ref:
        named = self.recipe.base_model_kind("recipe")
        if named is not None:
            kind, spec = named
            return kind.add(self, spec)
        return Ref(None, self.recipe.base_model)

    def _weights(
        self, start: Ref, data: dict[str, Ref], train_common: dict[str, Any], common: dict[str, Any]
    ) -> dict[str, Ref]:
        recipe = self.recipe
        found: dict[str, Ref] = {}
        for method, spec in recipe.contrastive.items():
            spec = spec or {}
            refs = {"dataset_name": data["train"]}
            if method == "P":
                refs["model_name_or_path"] = start
                args = {
                    **common,
                    **recipe.weights,
                    "positive_prompt": spec["positive_prompt"],
                    "negative_prompt": spec["negative_prompt"],
                }
            else:
                loss = "sft" if method == "S" else "dpo"
                for side, reverse in (("pos", False), ("neg", True)):
                    stage_args = {**train_common, **spec.get("args", {}), "loss_type": loss, "reverse_pairs": reverse}
                    what = {"S": ("SFT on chosen", "SFT on rejected"), "D": ("DPO", "reverse DPO")}[method][reverse]
                    self.command_stage(
                        f"contrast_{method}_{side}",
                        "train",
                        stage_args,
                        {"model_name_or_path": start, "dataset_name": data["train"]},
                        "output_dir",
                        None,
                        f"contrastive model {method}{'-' if reverse else '+'}: {what}",
                    )
                refs["positive_model_name_or_path"] = Ref(f"contrast_{method}_pos", "")
                refs["negative_model_name_or_path"] = Ref(f"contrast_{method}_neg", "")
                args = {**common, **recipe.weights}
            self.command_stage(
                f"weights_{method}",
                "weights",
                args,
                refs,
                "output_file",
                "weights.jsonl",
                f"token rewards and weights from method {method}",
            )
            found[method] = Ref(f"weights_{method}", "weights.jsonl")
        if recipe.random_weights and found:
            source = found.get("D") or next(iter(found.values()))
            self.command_stage(
                "weights_random",
                "weights",
                {"weight_transform": "random"},
                {"from_rewards": source},
                "output_file",
                "weights.jsonl",
                "random weights (ablation)",
            )
            found["random"] = Ref("weights_random", "weights.jsonl")
        for objective in recipe.objectives.values():
            name = objective.get("weights")
            if is_stage_kind("weights", name) and name not in found:
                found[name] = stage_kind("weights", name).add(self, name, dict(found), recipe.weights)
        return found

    def _objectives(
        self,
        start: Ref,
        data: dict[str, Ref],
        weights: dict[str, Ref],
        train_common: dict[str, Any],
        common: dict[str, Any],
    ) -> None:
        recipe = self.recipe
        evaluation = recipe.evaluate
        eval_stages: list[str] = []
        for seed in recipe.seeds:
            if evaluation is not None:
                self._evaluation_stage(f"eval_sft_s{seed}", start, start, data, common, seed)
                eval_stages.append(f"eval_sft_s{seed}")
            for name, objective in recipe.objectives.items():
                objective = dict(objective)
                source = objective.pop("weights", None)
                extra = objective.pop("args", {})
                pairs = objective.pop("data", "train")
                dataset = weights[source] if source else data[pairs]
                refs = {"model_name_or_path": start, "dataset_name": dataset}
                if "eval" in data:
                    refs["eval_dataset_name"] = data["eval"]
                for beta in recipe.betas or [None]:
                    run = f"{name}_s{seed}" if beta is None else f"{name}_b{beta:g}_s{seed}"
                    args = {**train_common, **objective, **extra, "seed": seed}
                    if beta is not None:
                        args["beta"] = beta
                    what = f"train {name} (seed {seed}" + (")" if beta is None else f", beta {beta:g})")
                    self.command_stage(f"train_{run}", "train", args, refs, "output_dir", None, what)
                    if evaluation is not None:
                        self._evaluation_stage(f"eval_{run}", Ref(f"train_{run}", ""), start, data, common, seed)
                        eval_stages.append(f"eval_{run}")
        if recipe.report and evaluation is not None:
            from tisdpo.pipeline.report import add_report_stage

            measured = [f"weights_{m}" for m in weights if m in METHODS]  # estimated rewards (random's are drawn)
            add_report_stage(self, eval_stages, [f"weights_{m}" for m in weights], data, self.weight_metric, measured)

    def _evaluation_stage(
        self, name: str, policy: Ref, reference: Ref, data: dict[str, Ref], common: dict[str, Any], seed: int
    ) -> None:
        """Generate from the policy (and its checkpoints) and from the SFT model; score and compare."""
        evaluation = self.recipe.evaluate or {}
        args = {**common, **evaluation.get("args", {}), "generate": True, "seed": seed}
        prompts = data.get("prompts") or data.get("eval") or data["train"]
        launcher = self.recipe.launcher
        with_checkpoints = bool(evaluation.get("checkpoints", False))

        def action(ctx: StageContext) -> None:
            model = policy.resolve(ctx)
            targets = [("final", model)]
            if with_checkpoints:
                steps = sorted((int(d.split("-")[1]), d) for d in os.listdir(model) if d.startswith("checkpoint-"))
                targets = [(d, os.path.join(model, d)) for _, d in steps[:-1]] + targets
            for label, path in targets:
                out = os.path.join(ctx.work_dir, label)
                if os.path.exists(os.path.join(out, "eval_results.json")):
                    continue  # finished before an interruption
                refs = {
                    "model_name_or_path": path,
                    "ref_model_name_or_path": reference.resolve(ctx),
                    "dataset_name": prompts.resolve(ctx),
                    "output_dir": out,
                }
                invoke("evaluate", {**args, **refs}, launcher, name)

        config = {
            "args": args,
            "policy": policy.identity(),
            "reference": reference.identity(),
            "prompts": prompts.identity(),
            "checkpoints": with_checkpoints,
        }
        self.add(
            name,
            action,
            config,
            policy.deps + reference.deps + prompts.deps,
            f"evaluate generations of {policy.stage or policy.path}",
        )
