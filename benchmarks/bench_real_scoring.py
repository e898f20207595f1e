"""P-method token-reward scoring on the real model: ``tisdpo weights`` against the reference code's approach.

SmolLM2-135M-Instruct (fp32) scores 32 real HH-harmless conversations under the harmless and the harmful
system prompts (4 sequences a pair). Each contender is a fresh process, measured whole (start, imports,
loading, scoring, writing) with its peak resident memory:

(a) ``tisdpo weights --positive_prompt harmless --negative_prompt harmful`` (the command line), with its
    default ``--batch_size 16`` and, (a'), with ``--batch_size 4``: each contrastive context is computed once
    for both responses (the shared-prompt layout, the default);
(c) the same with ``--shared_prompt false`` (one row per response, the path before prefix sharing), with
    ``--batch_size 16`` and, (c'), 4;
(b) the TIS-DPO reference code's approach: per pair and prompt, one forward of the two sequences,
    ``log_softmax`` over the whole vocabulary at every position, ``.cpu()``, a Python loop over the
    completion tokens (same token ids, from tisdpo's tokenization path).

Both must give the same rewards (the largest difference is printed).

Run: ``.venv/bin/python benchmarks/bench_real_scoring.py [--pairs 32] [--max_length 512]``
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

PROMPTS = ("harmless", "harmful")


def reference_worker(spec: dict[str, Any]) -> None:
    """The reference code's way of scoring, on tisdpo's token ids; writes the rewards as JSON lines."""
    setup_worker(spec["threads"])
    import torch

    from tisdpo.data.tokenize import PairTokenizer
    from tisdpo.modeling import load_causal_lm, load_tokenizer
    from tisdpo.weights.prompts import resolve_prompt

    tokenizer = load_tokenizer(spec["model_dir"])
    model = load_causal_lm(spec["model_dir"], dtype="float32").eval()
    pair_tokenizer = PairTokenizer(tokenizer, spec["max_length"], spec["max_length"])
    with open(spec["data_file"], encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    out = []
    for row in rows:
        per_prompt = []
        for name in PROMPTS:
            pair = pair_tokenizer.tokenize({**row, "prompt": resolve_prompt(name).apply(row["prompt"])})
            sequences = [pair.prompt_ids + pair.chosen_ids, pair.prompt_ids + pair.rejected_ids]
            width = max(len(s) for s in sequences)
            ids = torch.full((2, width), tokenizer.pad_token_id)
            mask = torch.zeros((2, width), dtype=torch.long)
            for i, sequence in enumerate(sequences):
                ids[i, : len(sequence)], mask[i, : len(sequence)] = torch.tensor(sequence), 1
            with torch.no_grad():
                logps = model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1).cpu()
            sides = []
            for i, completion in enumerate((pair.chosen_ids, pair.rejected_ids)):
                start = len(pair.prompt_ids)
                sides.append([float(logps[i, start + t - 1, token]) for t, token in enumerate(completion)])
            per_prompt.append(sides)
        (pos_c, pos_r), (neg_c, neg_r) = per_prompt
        out.append(
            {
                "chosen_token_rewards": [a - b for a, b in zip(pos_c, neg_c)],
                "rejected_token_rewards": [a - b for a, b in zip(pos_r, neg_r)],
            }
        )
    write_rows_jsonl(Path(spec["output_file"]), out)


def ours_argv(spec: dict[str, Any], batch_size: int | None = None, shared: bool = True) -> list[str]:
    batch = ["--batch_size", str(batch_size)] if batch_size else []
    batch += [] if shared else ["--shared_prompt", "false"]
    return [
        sys.executable, "-m", "tisdpo", "weights",
        "--model_name_or_path", spec["model_dir"],
        "--dataset_name", spec["data_file"],
        "--positive_prompt", PROMPTS[0],
        "--negative_prompt", PROMPTS[1],
        "--max_length", str(spec["max_length"]),
        "--max_prompt_length", str(spec["max_length"]),
        "--output_file", spec["output_file"],
        *batch,
    ]  # fmt: skip


def read_rewards(path: str) -> list[list[float]]:
    with open(path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return [row[f"{side}_token_rewards"] for row in rows for side in ("chosen", "rejected")]


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument(
        "--small_batch", type=int, default=4, help="(a') runs tisdpo weights with this --batch_size (default 16)."
    )
    parser.add_argument("--worker", action="store_true", help="(internal) run the reference approach")
    parser.add_argument("--spec", help="(internal) the worker's settings")
    args = parser.parse_args()
    if args.worker:
        reference_worker(json.loads(Path(args.spec).read_text()))
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
            "max_length": args.max_length,
        }
        ours = {
            "(a) tisdpo weights (P)": (None, True),
            f"(a') tisdpo weights (P) --batch_size {args.small_batch}": (args.small_batch, True),
            "(c) tisdpo weights (P) --shared_prompt false": (None, False),
            f"(c') tisdpo weights (P) --shared_prompt false --batch_size {args.small_batch}": (args.small_batch, False),
        }
        contenders = {
            name: (ours_argv({**spec, "output_file": f"{tmp}/{k}.jsonl"}, batch, shared), f"{tmp}/{k}.jsonl")
            for k, (name, (batch, shared)) in enumerate(ours.items())
        }
        contenders |= {
            "(b) reference code's approach": (
                [sys.executable, str(Path(__file__).resolve()), "--worker", "--spec", f"{tmp}/spec.json"],
                f"{tmp}/reference.jsonl",
            ),
        }
        Path(f"{tmp}/spec.json").write_text(json.dumps({**spec, "output_file": f"{tmp}/reference.jsonl"}))
        print(f"# P-method scoring on the real model ({machine_line(args.threads)})\n")
        if warning:
            print(warning, "\n")
        table, rewards = [], {}
        tokens = None
        for name, (argv, output) in contenders.items():
            run = run_process(argv, env=worker_env(args.threads, Path(tmp) / f"cache-{len(table)}"))
            if run.returncode != 0:
                sys.exit(f"{name} failed:\n{run.output_tail}")
            rewards[name] = read_rewards(output)
            tokens = sum(len(r) for r in rewards[name])
            table.append([name, run.seconds, tokens / run.seconds, run.peak_mib, f"{run.others_cpu:.0%}"])
            print(f"  done: {name} ({run.seconds:.0f} s)", file=sys.stderr, flush=True)
    print(
        f"SmolLM2-135M-Instruct fp32; {len(rows)} HH-harmless conversations (max_length {args.max_length}, "
        f"untruncated), 2 system prompts x 2 responses = {4 * len(rows)} sequences, {tokens} completion tokens "
        "scored per prompt; whole processes\n"
    )
    print(markdown_table(["contender", "process s", "completion tokens/s", "peak RSS MiB", "others CPU"], table))
    reference = rewards.pop("(b) reference code's approach")
    print()
    for name, ours in rewards.items():
        difference = max(abs(a - b) for x, y in zip(ours, reference) for a, b in zip(x, y))
        print(f"largest reward difference between {name.split()[0]} and (b): {difference:.2e} over {tokens} tokens")
    seconds = {row[0].split()[0]: row[1] for row in table}
    for name in ("(a)", "(a')", "(c)", "(c')"):
        print(f"{name} is {seconds['(b)'] / seconds[name]:.2f}x faster than (b), whole processes")
    for shared, unshared in (("(a)", "(c)"), ("(a')", "(c')")):
        print(f"prompt computed once: {shared} is {seconds[unshared] / seconds[shared]:.2f}x faster than {unshared}")


if __name__ == "__main__":
    main()
