"""Teacher-forced scoring of many (prompt, completion) sequences: per-token log-probs, batched.

Sequences are sorted by length and batched so that padding stays small; log-probs are gathered on
the device (chunked LM head on completion positions only) and only the per-token values travel to
the host. Used for reference log-probs and for contrastive token rewards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from tisdpo.data.collate import PreferenceCollator
from tisdpo.logprobs import DEFAULT_CHUNK_SIZE, completion_logps

Sequences = Sequence[tuple[Sequence[int], Sequence[int]]]


def length_sorted_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first).

    A batch holds at most ``batch_size`` sequences and, if ``max_tokens`` is set, at most that
    many padded tokens.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = lengths[current[0]] if current else lengths[index]
        if current and (len(current) >= batch_size or (max_tokens and width * (len(current) + 1) > max_tokens)):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def score_sequences(
    model: torch.nn.Module,
    sequences: Sequences,
    pad_token_id: int,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    logprob_path: str = "chunked",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    max_tokens: int | None = None,
    desc: str = "scoring",
    progress: bool = True,
) -> list[list[float]]:
    """``log p(completion_t | prompt, completion_<t)`` for every completion token of every sequence."""
    device = device or next(model.parameters()).device
    collator = PreferenceCollator(pad_token_id, sides=("chosen",))
    lengths = [len(p) + len(c) for p, c in sequences]
    results: list[list[float]] = [[] for _ in sequences]
    was_training = model.training
    model.eval()
    try:
        with context():
            batches = length_sorted_batches(lengths, batch_size, max_tokens)
            for batch_indices in tqdm(batches, desc=desc, disable=not progress or len(batches) < 4, leave=False):
                features = [
                    {
                        "index": i,
                        "prompt_input_ids": sequences[i][0],
                        "chosen_input_ids": sequences[i][1],
                    }
                    for i in batch_indices
                ]
                batch = {k: v.to(device) for k, v in collator(features).items()}
                out = completion_logps(
                    model,
                    batch["input_ids"],
                    batch["attention_mask"],
                    batch["completion_start"],
                    batch["completion_mask"],
                    logprob_path,
                    chunk_size,
                )
                values = out.logps[out.mask].cpu()
                counts = out.mask.sum(-1).tolist()
                for i, chunk in zip(batch_indices, values.split(counts)):
                    results[i] = chunk.tolist()
    finally:
        model.train(was_training)
    return results
