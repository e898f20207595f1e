"""Teacher-forced scoring of many (prompt, completion) sequences: per-token log-probs, batched.

Sequences are sorted by length and batched so that padding stays small; log-probs are gathered on
the device (chunked LM head on completion positions only) and only the per-token values travel to
the host. Used for reference log-probs and for contrastive token rewards. :func:`score_groups` scores
several completions of one prompt together, computing the prompt once (``data.collate``'s shared-prompt layout).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from tisdpo.data.collate import shared_prompt_layout, unshared_layout
from tisdpo.logprobs import DEFAULT_CHUNK_SIZE, batch_logps

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


Groups = Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]


@torch.no_grad()
def score_groups(
    model: torch.nn.Module,
    groups: Groups,
    pad_token_id: int,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    logprob_path: str = "chunked",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    max_tokens: int | None = None,
    desc: str = "scoring",
    progress: bool = True,
    shared_prompt: bool | None = None,
) -> list[list[list[float]]]:
    """``log p(completion_t | prompt, completion_<t)`` of every token of every completion of every group.

    A group is ``(prompt_ids, [completion_ids, ...])``; the result is indexed ``[group][completion][token]``.
    With ``shared_prompt`` (the default when some group has two or more completions) each prompt is computed once
    for all its completions (``data.collate``'s shared-prompt layout, one group a row); else every completion is a
    row of its own, after its prompt. Rows of similar length are batched together: at most ``batch_size``
    completions (``batch_size // K`` shared rows of up to K completions, at least one) and, if ``max_tokens`` is
    set, at most that many padded tokens a batch.
    """
    device = device or next(model.parameters()).device
    shared = any(len(completions) > 1 for _, completions in groups) if shared_prompt is None else shared_prompt
    if shared:
        units = [[(g, k) for k in range(len(completions))] for g, (_, completions) in enumerate(groups)]
        lengths = [len(prompt) + sum(len(c) for c in completions) for prompt, completions in groups]
        batch_size = max(1, batch_size // max((len(completions) for _, completions in groups), default=1))
    else:
        units = [[(g, k)] for g, (_, completions) in enumerate(groups) for k in range(len(completions))]
        lengths = [len(groups[g][0]) + len(groups[g][1][k]) for [(g, k)] in units]
    results: list[list[list[float]]] = [[[] for _ in completions] for _, completions in groups]
    was_training = model.training
    model.eval()
    try:
        with context():
            batches = length_sorted_batches(lengths, batch_size, max_tokens)
            for batch_units in tqdm(batches, desc=desc, disable=not progress or len(batches) < 4, leave=False):
                keys = [key for unit in batch_units for key in units[unit]]
                batch = collate_completions(groups, keys, pad_token_id, shared)
                out = batch_logps(model, {k: v.to(device) for k, v in batch.items()}, logprob_path, chunk_size)
                values = out.logps[out.mask].cpu()
                counts = out.mask.sum(-1).tolist()
                for (g, k), chunk in zip(keys, values.split(counts)):
                    results[g][k] = chunk.tolist()
    finally:
        model.train(was_training)
    return results


def collate_completions(
    groups: Groups, keys: Sequence[tuple[int, int]], pad_token_id: int, shared: bool
) -> dict[str, torch.Tensor]:
    """The batch of completions ``keys`` ((group, completion) pairs, group by group), one row each in key order."""
    if not shared:
        prompts = [groups[g][0] for g, _ in keys]
        return unshared_layout(prompts, [groups[g][1][k] for g, k in keys], pad_token_id)
    members: dict[int, list[Sequence[int]]] = {}
    for g, k in keys:
        members.setdefault(g, []).append(groups[g][1][k])
    return shared_prompt_layout([(groups[g][0], completions) for g, completions in members.items()], pad_token_id)


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
    groups = [(prompt, [completion]) for prompt, completion in sequences]
    scored = score_groups(
        model,
        groups,
        pad_token_id,
        batch_size,
        device,
        logprob_path,
        chunk_size,
        context,
        max_tokens,
        desc,
        progress,
        shared_prompt=False,
    )
    return [completions[0] for completions in scored]
