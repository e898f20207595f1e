"""Training speed and memory: ours (dpo, tisdpo) against TRL's DPOTrainer and a bare floor.

Every contender trains the same tiny 32k-vocabulary Llama on the same real HH pairs (same tokens,
same truncation, same order, same batch, learning rate and beta), each in a fresh process:

(a) TRL DPOTrainer, DPOConfig defaults except fp32 (bf16 off) and no gradient checkpointing: it
    runs a reference model every step (precompute_ref_log_probs=False is TRL's default);
(b) ours, --loss_type dpo, and (c) ours, --loss_type tisdpo (random positive token weights), both
    with reference log-probs precomputed (our default), the precomputation timed separately;
(d) the floor: one bare forward + backward of the policy (``model.model`` then the LM head on the
    completion positions only, loss = a sum of gathered logits), plus one no-grad reference
    forward of the same kind.

Only training steps are timed (TrainerCallback on_step_begin -> on_step_end), after warm-up steps.

Run: ``.venv/bin/python benchmarks/bench_training.py [--steps 8] [--batch_size 4] [--max_length 256]``
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PeakMemory,
    base_parser,
    busy_warning,
    describe_assets,
    load_model,
    load_tokenizer,
    machine_line,
    markdown_table,
    prepare_assets,
    require_data,
    run_isolated,
    setup_worker,
    tokenizable_rows,
)


def step_timer() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step: forward, backward, clipping, optimizer and scheduler."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.optimizer_times: list[float] = []  # optimizer step, scheduler, zero_grad
            self._start = self._optimizer = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self._optimizer = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.times.append(now - self._start)
            self.optimizer_times.append(now - self._optimizer)

    return StepTimer()


def quiet(trainer: Any) -> None:
    """No metric dicts printed to stdout (logging itself still runs, outside the timed steps)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def timed_steps(times: list[float], warmup: int) -> list[float]:
    if len(times) <= warmup:
        raise RuntimeError(f"only {len(times)} steps ran; expected more than {warmup}")
    return times[warmup:]


def trainer_result(timer: Any, config: dict[str, Any], memory: Any, precompute: float, settings: str) -> dict[str, Any]:
    """A trainer contender's result: its timed steps (after warm-up), peak memory, precompute time and settings."""
    return {
        "step_times": timed_steps(timer.times, config["warmup_steps"]),
        "optimizer_times": timed_steps(timer.optimizer_times, config["warmup_steps"]),
        "peak_mib": memory.peak_mib,
        "precompute_seconds": precompute,
        "settings": settings,
    }


# -- (a) TRL -----------------------------------------------------------------------------------
def run_trl(config: dict[str, Any]) -> dict[str, Any]:
    setup_worker(config["threads"])
    import datasets
    from trl import DPOConfig, DPOTrainer

    class SameTokensDPOTrainer(DPOTrainer):
        """TRL's trainer, fed the very token ids ours trains on (TRL's own tokenization and
        truncation differ: no prompt truncation, prompt and response tokenized together)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    model_dir = config["model_dir"]
    tokenizer = load_tokenizer(model_dir)
    policy = load_model(model_dir)
    with PeakMemory() as memory:
        dataset = datasets.Dataset.from_dict(
            {
                "prompt_ids": [p["prompt_ids"] for p in config["pairs"]],
                "chosen_ids": [p["chosen_ids"] for p in config["pairs"]],
                "rejected_ids": [p["rejected_ids"] for p in config["pairs"]],
            }
        )
        args = DPOConfig(
            output_dir=config["output_dir"] + "/trl",
            per_device_train_batch_size=config["batch_size"],
            max_steps=config["total_steps"],
            learning_rate=config["learning_rate"],
            beta=config["beta"],
            max_length=config["max_length"],
            bf16=False,  # CPU fp32, like ours
            gradient_checkpointing=config["trl_gradient_checkpointing"],
            train_sampling_strategy="sequential",
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            seed=0,
        )
        timer = step_timer()
        trainer = SameTokensDPOTrainer(
            model=policy,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[timer],
        )
        quiet(trainer)
        trainer.train()
    settings = (
        f"precompute_ref_log_probs={args.precompute_ref_log_probs}, "
        f"gradient_checkpointing={args.gradient_checkpointing}, bf16={args.bf16}, optim={args.optim}"
    )
    return trainer_result(timer, config, memory, 0.0, settings)


# -- (b), (c) ours -----------------------------------------------------------------------------
def run_ours(config: dict[str, Any], loss_type: str) -> dict[str, Any]:
    """What ``tisdpo train`` does (its library calls), with a step timer."""
    setup_worker(config["threads"])
    from transformers import set_seed

    from tisdpo.config import DataArguments, ModelArguments, TisdpoConfig, parse_config
    from tisdpo.data.load import load_pairs
    from tisdpo.data.tokenize import PairTokenizer
    from tisdpo.modeling import load_model as load_policy
    from tisdpo.modeling import load_tokenizer_for
    from tisdpo.reference import with_reference_logps
    from tisdpo.trainer import PreferenceTrainer

    # A fresh folder every run: the reference cache must not be reused by a repeat.
    out = tempfile.mkdtemp(prefix=f"ours-{loss_type}-", dir=config["output_dir"])
    argv = [
        "--model_name_or_path", config["model_dir"],
        "--dataset_name", config["data_file"],
        "--output_dir", out,
        "--ref_logps_cache_dir", out + "/ref-cache",  # fresh: the precomputation really runs
        "--loss_type", loss_type,
        "--per_device_train_batch_size", str(config["batch_size"]),
        "--max_steps", str(config["total_steps"]),
        "--max_length", str(config["max_length"]),
        "--max_prompt_length", str(config["max_prompt_length"]),
        "--learning_rate", str(config["learning_rate"]),
        "--beta", str(config["beta"]),
        "--train_sampling_strategy", "sequential",
        "--report_to", "none",
        "--save_strategy", "no",
        "--disable_tqdm", "true",
        "--seed", "0",
    ]  # fmt: skip
    if config["lm_head_chunk_size"]:
        argv += ["--lm_head_chunk_size", str(config["lm_head_chunk_size"])]
    model_args, data_args, train_config = parse_config(
        [ModelArguments, DataArguments, TisdpoConfig], argv, prog="tisdpo train"
    )
    set_seed(train_config.seed)
    tokenizer = load_tokenizer_for(model_args)
    policy = load_policy(model_args, model_args.model_name_or_path)
    with PeakMemory() as memory:
        pair_tokenizer = PairTokenizer(tokenizer, data_args.max_length, data_args.max_prompt_length)
        train_dataset = load_pairs(
            data_args.dataset_name,
            data_args.dataset_split,
            data_args,
            pair_tokenizer,
            train_config.needs_weights,
            data_args.max_samples,
        )
        if [list(x) for x in train_dataset["chosen_input_ids"]] != [p["chosen_ids"] for p in config["pairs"]]:
            raise RuntimeError("our trainer tokenized the pairs differently from TRL's input")
        start = time.perf_counter()
        (train_dataset,) = with_reference_logps(
            [train_dataset], policy, model_args.model_name_or_path, tokenizer, train_config
        )
        precompute = time.perf_counter() - start
        timer = step_timer()
        trainer = PreferenceTrainer(policy, train_config, tokenizer, train_dataset=train_dataset, callbacks=[timer])
        quiet(trainer)
        trainer.train()
    settings = (
        f"precompute_ref_log_probs={train_config.precompute_ref_log_probs}, "
        f"logprob_path={train_config.logprob_path}, lm_head_chunk_size={train_config.lm_head_chunk_size}, "
        f"optim={train_config.optim}"
    )
    return trainer_result(timer, config, memory, precompute, settings)


# -- (d) the floor -----------------------------------------------------------------------------
def run_floor(config: dict[str, Any]) -> dict[str, Any]:
    setup_worker(config["threads"])
    import torch

    from tisdpo.data.collate import PreferenceCollator
    from tisdpo.logprobs import completion_positions

    tokenizer = load_tokenizer(config["model_dir"])
    model = load_model(config["model_dir"])
    collator = PreferenceCollator(tokenizer.pad_token_id)
    features = [
        {
            "index": i,
            "prompt_input_ids": p["prompt_ids"],
            "chosen_input_ids": p["chosen_ids"],
            "rejected_input_ids": p["rejected_ids"],
        }
        for i, p in enumerate(config["pairs"])
    ]
    size = config["batch_size"]
    batches = [collator(features[start : start + size]) for start in range(0, len(features), size)]

    chunk = config["floor_chunk"]

    def completion_hidden(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        start, mask = batch["completion_start"], batch["completion_mask"]
        rows, positions = completion_positions(start, mask)
        used = int((start + mask.sum(-1)).max())
        input_ids = batch["input_ids"][:, :used]
        hidden = model.model(
            input_ids=input_ids, attention_mask=batch["attention_mask"][:, :used], use_cache=False
        ).last_hidden_state
        return hidden[rows, positions], input_ids[rows, positions + 1]

    def head_loss(hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """A sum of label logits; the LM head runs on ``chunk`` tokens at a time (0: all at once)."""
        weight = model.lm_head.weight.t()
        size = chunk or hidden.shape[0]
        return sum(
            (hidden[i : i + size] @ weight).gather(-1, labels[i : i + size, None]).sum()
            for i in range(0, hidden.shape[0], size)
        )

    train_times, reference_times = [], []
    model.train()
    with PeakMemory() as memory:
        for batch in batches[: config["total_steps"]]:
            start = time.perf_counter()
            head_loss(*completion_hidden(batch)).backward()
            model.zero_grad(set_to_none=True)
            train_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            with torch.no_grad():
                head_loss(*completion_hidden(batch))
            reference_times.append(time.perf_counter() - start)
    warmup = config["warmup_steps"]
    return {
        "step_times": timed_steps(train_times, warmup),
        "reference_times": timed_steps(reference_times, warmup),
        "peak_mib": memory.peak_mib,
    }


def combine_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeated runs of one contender: each step's fastest time (the same batch every run), the
    fastest precomputation, the largest peak memory and the busiest neighbourhood."""
    combined = dict(runs[0])
    for key in ("step_times", "reference_times", "optimizer_times"):
        if key in combined:
            combined[key] = [min(times) for times in zip(*(run[key] for run in runs))]
    combined["precompute_seconds"] = min(run.get("precompute_seconds", 0.0) for run in runs)
    combined["peak_mib"] = max(run["peak_mib"] for run in runs)
    combined["others_cpu"] = max(run["others_cpu"] for run in runs)
    return combined


# -- main --------------------------------------------------------------------------------------
def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="Timed training steps.")
    parser.add_argument("--warmup_steps", type=int, default=2, help="Steps run first and left out of timing.")
    parser.add_argument("--batch_size", type=int, default=4, help="Pairs per step.")
    parser.add_argument(
        "--pairs",
        type=int,
        default=None,
        help="Pairs in the training set (default: exactly (warmup_steps + steps) * batch_size).",
    )
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--max_prompt_length", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-6)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument(
        "--lm_head_chunk_size",
        type=int,
        default=None,
        help="Pass --lm_head_chunk_size to ours (default: our trainer's own default).",
    )
    parser.add_argument(
        "--floor_chunk",
        type=int,
        default=128,
        help="The floor applies the LM head to this many tokens at a time (0: all at once).",
    )
    parser.add_argument(
        "--trl_gradient_checkpointing",
        action="store_true",
        help="Run TRL with gradient checkpointing (TRL's DPOConfig default; off by default here).",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="Run every contender this many times (fresh processes); each step keeps its fastest "
        "time, which filters out noise from other processes.",
    )
    parser.add_argument(
        "--tries",
        type=int,
        default=1,
        help="Rerun a contender (fresh process) up to this many times while other processes "
        "use over 5%% of the CPUs, keeping the quietest run.",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["trl", "dpo", "tisdpo", "floor"],
        default=["dpo", "tisdpo", "floor", "trl"],
        help="Run only these contenders.",
    )
    args = parser.parse_args()
    warning = busy_warning()
    data = require_data(args.data)
    assets = prepare_assets(data, args.cache_dir)
    tokenizer = load_tokenizer(assets.model_dirs[0])
    total_steps = args.warmup_steps + args.steps
    needed = total_steps * args.batch_size
    count = max(args.pairs or needed, needed)
    rows, pairs = tokenizable_rows(data, tokenizer, count, args.max_length, args.max_prompt_length)

    def sequence_tokens(pair: Any) -> int:  # real tokens of the chosen and the rejected sequence
        return 2 * len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)

    step_tokens = [
        sum(sequence_tokens(p) for p in pairs[s * args.batch_size : (s + 1) * args.batch_size])
        for s in range(total_steps)
    ]
    timed_tokens = sum(step_tokens[args.warmup_steps :])
    timed_pairs = args.steps * args.batch_size

    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="tisdpo-bench-") as tmp:
        data_file = f"{tmp}/pairs.jsonl"
        with open(data_file, "w", encoding="utf-8") as handle:
            for row, pair in zip(rows, pairs):
                record = {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}
                for side in ("chosen", "rejected"):
                    ids = getattr(pair, f"{side}_ids")
                    record[f"{side}_token_ids"] = ids
                    record[f"{side}_weights"] = [round(rng.uniform(0.5, 1.5), 4) for _ in ids]
                handle.write(json.dumps(record) + "\n")
        config = {
            "model_dir": assets.model_dirs[0],
            "data_file": data_file,
            "output_dir": tmp,
            "pairs": [
                {"prompt_ids": p.prompt_ids, "chosen_ids": p.chosen_ids, "rejected_ids": p.rejected_ids} for p in pairs
            ],
            "threads": args.threads,
            "batch_size": args.batch_size,
            "total_steps": total_steps,
            "warmup_steps": args.warmup_steps,
            "max_length": args.max_length,
            "max_prompt_length": args.max_prompt_length,
            "learning_rate": args.learning_rate,
            "beta": args.beta,
            "trl_gradient_checkpointing": args.trl_gradient_checkpointing,
            "lm_head_chunk_size": args.lm_head_chunk_size,
            "floor_chunk": args.floor_chunk,
        }
        print(f"# Training step ({machine_line(args.threads)})\n")
        if warning:
            print(warning, "\n")
        print(describe_assets(assets))
        print(
            f"{len(pairs)} HH pairs, {args.batch_size} pairs a step, max_length {args.max_length}, "
            f"max_prompt_length {args.max_prompt_length}; {args.warmup_steps} warm-up + {args.steps} "
            f"timed steps ({timed_tokens} real tokens of chosen + rejected sequences in the timed "
            f"steps, {timed_tokens / args.steps:.0f} a step); each step's best of {args.repeats} runs\n",
            flush=True,
        )
        results: dict[str, dict[str, Any]] = {}
        for name in args.only:
            function, extra = {"trl": (run_trl, ()), "floor": (run_floor, ())}.get(name, (run_ours, (name,)))
            runs = [run_isolated(function, config, *extra, tries=args.tries) for _ in range(args.repeats)]
            results[name] = combine_runs(runs)
            print(f"  done: {name}", file=sys.stderr, flush=True)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    labels = {
        "trl": "(a) TRL DPOTrainer",
        "dpo": "(b) ours dpo",
        "tisdpo": "(c) ours tisdpo",
        "floor": f"(d) floor: policy fwd+bwd (+ ref fwd), head in blocks of {args.floor_chunk or 'all'} tokens",
    }
    table, summary = [], {}
    for name in ("trl", "dpo", "tisdpo", "floor"):
        if name not in results:
            continue
        result = results[name]
        step = mean(result["step_times"])
        # The precomputation covers every pair of the training set; charge the timed steps their share.
        share = result.get("precompute_seconds", 0.0) * timed_pairs / len(pairs)
        total = step + share / args.steps
        if name == "floor":
            total = step + mean(result["reference_times"])
        summary[name] = {"step": step, "total": total, "peak": result["peak_mib"]}
        table.append(
            [
                labels[name],
                step,
                min(result["step_times"]),
                mean(result["optimizer_times"]) if "optimizer_times" in result else "-",
                timed_tokens / args.steps / step,
                "-" if name == "floor" else result["precompute_seconds"],
                mean(result["reference_times"]) if name == "floor" else ("in step" if name == "trl" else "-"),
                total,
                timed_tokens / args.steps / total,
                result["peak_mib"],
                f"{result['others_cpu']:.0%}",
            ]
        )
    print(
        markdown_table(
            [
                "contender",
                "step s (mean)",
                "fastest step s",
                "optimizer s/step",
                "tokens/s",
                "precompute s",
                "ref fwd s/step",
                "total s/step",
                "total tokens/s",
                "peak MiB",
                "others CPU",
            ],
            table,
        ),
        "\n",
    )
    for name in ("trl", "dpo", "tisdpo"):
        if name in results:
            print(f"{labels[name]}: {results[name]['settings']}")
    print()
    ours_runs = {name: summary[name] for name in ("dpo", "tisdpo") if name in summary}
    if "trl" in summary:
        trl = summary["trl"]
        for name, ours in ours_runs.items():
            print(
                f"{name}: throughput vs TRL (total, precompute included) = "
                f"{trl['step'] / ours['total']:.2f}x (target >= 3x); "
                f"step only = {trl['step'] / ours['step']:.2f}x; "
                f"peak memory vs TRL = {ours['peak'] / trl['peak']:.2f}x (target <= 0.5x)"
            )
    if "floor" in summary:
        floor = summary["floor"]
        for name, ours in ours_runs.items():
            print(
                f"{name}: step / floor fwd+bwd = {ours['step'] / floor['step']:.2f}x; "
                f"total / (floor fwd+bwd + ref fwd) = {ours['total'] / floor['total']:.2f}x "
                "(target <= 1.3x)"
            )
        if "trl" in summary:
            print(f"TRL: step / (floor fwd+bwd + ref fwd) = {summary['trl']['step'] / floor['total']:.2f}x")


if __name__ == "__main__":
    main()
