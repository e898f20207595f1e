"""Batched sampling of responses and teacher-forced log-probabilities of the sampled tokens.

Sampling uses ``model.generate`` on left-padded batches (with the attention mask and ``pad_token_id``)
of prompts of similar length. Only the flags given here shape the sampler: the model's own
``generation_config.json`` (a hub repetition penalty, top_k 50 ...) is set aside during the call, so
that at temperature 1, top_p 1 and top_k 0 a response is drawn from the model's distribution
itself. Generation stops at EOS (the tokenizer's EOS and any EOS of the model's generation config);
the returned ids of a response end with that EOS when one was generated.

``torch.manual_seed(seed)`` is called before each model's sampling, so a run is reproducible for a
given seed, batch size and number of processes (``tisdpo evaluate`` derives the seed from ``--seed``,
the model's role, policy or baseline, and the process index, so that the policy's and the
baseline's samples are independent draws even when both are the same model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from tisdpo.logprobs import DEFAULT_CHUNK_SIZE
from tisdpo.scoring import length_sorted_batches, score_sequences


def eos_token_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """The tokenizer's EOS plus those of the model's generation config (e.g. an end-of-turn token)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    for value in extra if isinstance(extra, list | tuple) else [extra]:
        if value is not None and value not in ids:
            ids.append(int(value))
    return ids


def trim_at_eos(ids: Sequence[int], eos_ids: Sequence[int]) -> tuple[list[int], bool]:
    """The tokens up to and including the first EOS; whether an EOS was found."""
    for position, token in enumerate(ids):
        if token in eos_ids:
            return list(ids[: position + 1]), True
    return list(ids), False


@contextlib.contextmanager
def own_generation_defaults(model: Any) -> Iterator[None]:
    """Hide the model's generation_config.json defaults for the duration of the block."""
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


def generation_config(
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    eos_ids: Sequence[int],
    pad_token_id: int,
) -> Any:
    from transformers import GenerationConfig

    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k}
        if temperature > 0
        else {"do_sample": False}
    )
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=list(eos_ids),
        pad_token_id=pad_token_id,
        num_return_sequences=1,
        **sampling,
    )


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            input_ids[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
            attention_mask[row, width - len(prompt) :] = 1
    return input_ids, attention_mask


@torch.no_grad()
def sample_responses(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    num_samples: int,
    eos_ids: Sequence[int],
    pad_token_id: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    desc: str = "sampling",
    progress: bool = True,
) -> list[list[list[int]]]:
    """``num_samples`` responses per prompt: ``out[i][k]`` holds the token ids of sample k of prompt i."""
    device = device or next(model.parameters()).device
    items = [(i, k) for i in range(len(prompt_ids)) for k in range(num_samples)]
    out: list[list[list[int]]] = [[[] for _ in range(num_samples)] for _ in prompt_ids]
    if not items:
        return out
    config = generation_config(max_new_tokens, temperature, top_p, top_k, eos_ids, pad_token_id)
    batches = length_sorted_batches([len(prompt_ids[i]) for i, _ in items], batch_size)
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    try:
        with own_generation_defaults(model):
            for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
                input_ids, attention_mask = left_pad([prompt_ids[items[j][0]] for j in batch], pad_token_id)
                generated = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=config,
                )
                new_tokens = generated[:, input_ids.shape[1] :].tolist()
                for j, ids in zip(batch, new_tokens):
                    i, k = items[j]
                    out[i][k] = trim_at_eos(ids, eos_ids)[0]
    finally:
        model.train(was_training)
    return out


def sequence_logps(
    model: Any,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_token_id: int,
    batch_size: int = 32,
    logprob_path: str = "chunked",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    desc: str = "log-probs",
    progress: bool = True,
) -> list[float]:
    """``sum_t log p(y_t | x, y_<t)`` of each response (teacher forced, with ``score_sequences``)."""
    if not prompts:
        return []
    per_token = score_sequences(
        model,
        list(zip(prompts, responses)),
        pad_token_id,
        batch_size=batch_size,
        logprob_path=logprob_path,
        chunk_size=chunk_size,
        desc=desc,
        progress=progress,
    )
    return [float(sum(values)) for values in per_token]
