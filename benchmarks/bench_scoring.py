"""Token-reward scoring speed: ``tisdpo weights`` against the reference code's approach and the floor.

Contenders, each in a fresh process, on the same real HH pairs and the same two contrastive models
(two tiny 32k-vocabulary Llamas with different seeds):

(a) ours:      ``tisdpo.weights.estimate.score_part`` (what ``tisdpo weights`` runs on each part):
               length-sorted batches, LM head on completion positions only, log-probs gathered on
               the device, for the positive and the negative model;
(b) reference: the TIS-DPO reference code's approach: per pair and model, one forward of the two
               sequences, ``log_softmax`` over the full vocabulary at every position, ``.cpu()``, then
               a Python loop over the completion tokens;
(c) floor:     the two models' bodies (``model.model``) on the same length-sorted batches as (a) plus
               their LM heads on completion positions only (a matmul, no softmax), under no_grad.

Run: ``.venv/bin/python benchmarks/bench_scoring.py [--pairs 128] [--steps 1]``
"""

from __future__ import annotations

import sys
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


def _rewards(pos: list[list[float]], neg: list[list[float]]) -> list[list[float]]:
    return [[a - b for a, b in zip(p, n)] for p, n in zip(pos, neg)]


# -- (a) ours ----------------------------------------------------------------------------------
def run_ours(config: dict[str, Any], rows: list[dict[str, Any]], chunk_size: int | None = None) -> dict[str, Any]:
    setup_worker(config["threads"])
    from tisdpo.config import WeightsArguments
    from tisdpo.data.tokenize import PairTokenizer
    from tisdpo.weights.estimate import Contrast, score_part

    tokenizer = load_tokenizer(config["model_dirs"][0])
    contrast = Contrast(load_model(config["model_dirs"][0]), load_model(config["model_dirs"][1]))
    pair_tokenizer = PairTokenizer(tokenizer, config["max_length"], config["max_prompt_length"])
    args = WeightsArguments()
    if config["batch_size"]:
        args.batch_size = config["batch_size"]
    if chunk_size:
        args.lm_head_chunk_size = chunk_size
    where = [f"pair {i}" for i in range(len(rows))]
    times = []
    with PeakMemory() as memory:
        score_part(rows[:2], pair_tokenizer, contrast, args, where[:2])  # warm-up
        for _ in range(config["steps"]):
            start = time.perf_counter()
            out = score_part(rows, pair_tokenizer, contrast, args, where)
            times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for row in rows:
        pair_tokenizer.tokenize(row)
    tokenize_seconds = time.perf_counter() - start
    rewards = []
    for line in out:
        rewards += [line["result"]["chosen_token_rewards"], line["result"]["rejected_token_rewards"]]
    return {
        "seconds": min(times),
        "peak_mib": memory.peak_mib,
        "rewards": rewards,
        "batch_size": args.batch_size,
        "chunk_size": args.lm_head_chunk_size,
        "tokenize_seconds": tokenize_seconds,
    }


# -- (b) the reference code's approach ---------------------------------------------------------
def reference_logps(model: Any, pair: Any, pad_token_id: int) -> list[list[float]]:
    """One pair through one model the way the reference code does it (kept deliberately naive)."""
    import torch

    sequences = [pair.prompt_ids + pair.chosen_ids, pair.prompt_ids + pair.rejected_ids]
    width = max(len(s) for s in sequences)
    input_ids = torch.full((2, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((2, width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        attention_mask[row, : len(sequence)] = 1
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logps = torch.log_softmax(logits.float(), dim=-1).cpu()  # (2, T, V) on the host
    start = len(pair.prompt_ids)
    out = []
    for row, sequence in enumerate(sequences):
        values = []
        for position in range(start, len(sequence)):
            values.append(logps[row, position - 1, sequence[position]].item())
        out.append(values)
    return out


def run_reference(config: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    setup_worker(config["threads"])
    import torch

    from tisdpo.data.tokenize import PairTokenizer

    tokenizer = load_tokenizer(config["model_dirs"][0])
    models = [load_model(path).eval() for path in config["model_dirs"]]
    pair_tokenizer = PairTokenizer(tokenizer, config["max_length"], config["max_prompt_length"])
    pad = tokenizer.pad_token_id
    times = []
    with PeakMemory() as memory, torch.no_grad():
        for model in models:  # warm-up
            reference_logps(model, pair_tokenizer.tokenize(rows[0]), pad)
        for _ in range(config["steps"]):
            start = time.perf_counter()
            pairs = [pair_tokenizer.tokenize(row) for row in rows]
            sides = []
            for model in models:
                logps = []
                for pair in pairs:
                    logps += reference_logps(model, pair, pad)
                sides.append(logps)
            times.append(time.perf_counter() - start)
    return {"seconds": min(times), "peak_mib": memory.peak_mib, "rewards": _rewards(*sides)}


# -- (c) the floor -----------------------------------------------------------------------------
def run_floor(config: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    setup_worker(config["threads"])
    import torch

    from tisdpo.data.collate import PreferenceCollator
    from tisdpo.data.tokenize import PairTokenizer
    from tisdpo.logprobs import completion_positions
    from tisdpo.scoring import length_sorted_batches

    tokenizer = load_tokenizer(config["model_dirs"][0])
    models = [load_model(path).eval() for path in config["model_dirs"]]
    pair_tokenizer = PairTokenizer(tokenizer, config["max_length"], config["max_prompt_length"])
    collator = PreferenceCollator(tokenizer.pad_token_id, sides=("chosen",))
    pairs = [pair_tokenizer.tokenize(row) for row in rows]
    sequences = []
    for pair in pairs:
        sequences += [(pair.prompt_ids, pair.chosen_ids), (pair.prompt_ids, pair.rejected_ids)]
    batches = length_sorted_batches([len(p) + len(c) for p, c in sequences], config["floor_batch_size"])
    collated = [
        collator(
            [{"index": i, "prompt_input_ids": sequences[i][0], "chosen_input_ids": sequences[i][1]} for i in batch]
        )
        for batch in batches
    ]

    def score(model: Any, batch: dict[str, torch.Tensor]) -> None:
        start, mask = batch["completion_start"], batch["completion_mask"]
        rows_, positions = completion_positions(start, mask)
        used = int((start + mask.sum(-1)).max())
        hidden = model.model(
            input_ids=batch["input_ids"][:, :used],
            attention_mask=batch["attention_mask"][:, :used],
            use_cache=False,
        ).last_hidden_state
        hidden = hidden[rows_, positions]
        chunk = config["floor_chunk"] or hidden.shape[0]
        weight = model.lm_head.weight.t()
        for i in range(0, hidden.shape[0], chunk):
            hidden[i : i + chunk] @ weight  # the logits; nothing more is computed from them

    times = []
    with PeakMemory() as memory, torch.no_grad():
        for model in models:  # warm-up
            score(model, collated[-1])
        for _ in range(config["steps"]):
            start = time.perf_counter()
            for model in models:
                for batch in collated:
                    score(model, batch)
            times.append(time.perf_counter() - start)
    return {"seconds": min(times), "peak_mib": memory.peak_mib}


# -- main --------------------------------------------------------------------------------------
def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=128, help="HH pairs to score.")
    parser.add_argument("--steps", type=int, default=3, help="Timed repetitions of each contender (best is kept).")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="Sequences per batch for ours (default: tisdpo weights' own default) and the floor.",
    )
    parser.add_argument(
        "--floor_chunk",
        type=int,
        default=128,
        help="The floor applies the LM head to this many tokens at a time (0: a whole batch at "
        "once); on CPU small blocks avoid page-faulting a fresh logits buffer every batch.",
    )
    parser.add_argument(
        "--also_chunk_sizes",
        type=int,
        nargs="*",
        default=[],
        help="Also run ours with these --lm_head_chunk_size values (default: only the command's default).",
    )
    parser.add_argument(
        "--tries",
        type=int,
        default=1,
        help="Rerun a contender (fresh process) up to this many times while other processes "
        "use over 5%% of the CPUs, keeping the quietest run.",
    )
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--max_prompt_length", type=int, default=256)
    parser.add_argument("--skip_reference", action="store_true", help="Do not run the (slow) reference approach.")
    args = parser.parse_args()
    warning = busy_warning()
    data = require_data(args.data)
    assets = prepare_assets(data, args.cache_dir)
    tokenizer = load_tokenizer(assets.model_dirs[0])
    rows, pairs = tokenizable_rows(data, tokenizer, args.pairs, args.max_length, args.max_prompt_length)
    from tisdpo.config import WeightsArguments

    config = {
        "model_dirs": assets.model_dirs,
        "threads": args.threads,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "floor_batch_size": args.batch_size or WeightsArguments().batch_size,
        "floor_chunk": args.floor_chunk,
        "max_length": args.max_length,
        "max_prompt_length": args.max_prompt_length,
    }
    sequence_tokens = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    completion_tokens = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    tokens = 2 * sequence_tokens  # every sequence goes through both models

    print(f"# Token-reward scoring ({machine_line(args.threads)})\n")
    if warning:
        print(warning, "\n")
    print(describe_assets(assets))
    print(
        f"{len(pairs)} HH pairs = {2 * len(pairs)} sequences, {sequence_tokens} tokens "
        f"({completion_tokens} completion tokens), max_length {args.max_length}, "
        f"max_prompt_length {args.max_prompt_length}; two models; best of {args.steps}\n",
        flush=True,
    )
    results = {"ours": run_isolated(run_ours, config, rows, tries=args.tries)}
    for chunk_size in args.also_chunk_sizes:
        results[f"ours-{chunk_size}"] = run_isolated(run_ours, config, rows, chunk_size, tries=args.tries)
    results["floor"] = run_isolated(run_floor, config, rows, tries=args.tries)
    if not args.skip_reference:
        results["reference"] = run_isolated(run_reference, config, rows, tries=args.tries)

    labels = {
        "ours": f"(a) ours: score_part, batch {results['ours']['batch_size']}, "
        f"lm_head_chunk_size {results['ours']['chunk_size']}",
        "reference": "(b) reference approach: full log_softmax + .cpu() + Python loop",
        "floor": f"(c) floor: model bodies + LM head on completion positions, batch {config['floor_batch_size']}, "
        f"head in blocks of {args.floor_chunk or 'a whole batch of'} tokens",
    }
    for chunk_size in args.also_chunk_sizes:
        labels[f"ours-{chunk_size}"] = labels["ours"].replace(
            f"lm_head_chunk_size {results['ours']['chunk_size']}",
            f"--lm_head_chunk_size {chunk_size}",
        )
    table = []
    for name in ["ours", *(f"ours-{c}" for c in args.also_chunk_sizes), "reference", "floor"]:
        if name in results:
            result = results[name]
            table.append(
                [
                    labels[name],
                    result["seconds"],
                    tokens / result["seconds"],
                    result["peak_mib"],
                    result["seconds"] / results["floor"]["seconds"],
                    f"{result['others_cpu']:.0%}",
                ]
            )
    print(markdown_table(["contender", "seconds", "tokens/s", "peak MiB", "x floor", "others CPU"], table), "\n")
    ours, floor = results["ours"], results["floor"]
    print(
        f"ours / floor     = {ours['seconds'] / floor['seconds']:.2f}x  (target <= 1.3x)"
        f"  [ours includes tokenizing the pairs: {ours['tokenize_seconds']:.3f} s]"
    )
    for chunk_size in args.also_chunk_sizes:
        variant = results[f"ours-{chunk_size}"]
        print(
            f"ours with --lm_head_chunk_size {chunk_size}: "
            f"{variant['seconds'] / floor['seconds']:.2f}x the floor"
            + (
                f", {results['reference']['seconds'] / variant['seconds']:.2f}x faster than the reference"
                if "reference" in results
                else ""
            )
        )
    if "reference" in results:
        reference = results["reference"]
        diff = max(abs(a - b) for x, y in zip(ours["rewards"], reference["rewards"]) for a, b in zip(x, y, strict=True))
        print(f"reference / ours = {reference['seconds'] / ours['seconds']:.2f}x  (target >= 8x)")
        print(f"max |reward(ours) - reward(reference)| = {diff:.2e} over {completion_tokens} tokens")


if __name__ == "__main__":
    main()
