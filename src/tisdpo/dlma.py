"""DLMA: preference pairs without human labels (Liu et al. 2024), as ``tisdpo dlma generate`` makes them.

For each prompt q the model samples a1 under the positive prompt p+ and a2 under the negative
prompt p-, and scores the pair with the same model under both prompts:

    R = [log p(a1 | p+, q) - log p(a1 | p-, q)] - [log p(a2 | p+, q) - log p(a2 | p-, q)]

The output rows are ``prompt``, ``chosen`` (a1), ``rejected`` (a2) and ``dlma_score`` (R): a plain
preference file for ``tisdpo train --loss_type dlma`` (DPO with R as a margin), ``tisdpo weights``
and TIS-DPO. Conversational prompts give conversational pairs (each response an assistant message).
Log-probs are teacher-forced on the trainer's completion ids (for conversations, the tokens the chat
template adds after the generation prompt), the contexts built by the one tokenization path: only the
user's prompt is cut to ``max_prompt_length``, never the contrastive text.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tisdpo.data.tokenize import PairTokenizer, tokenizer_fingerprint
from tisdpo.evaluation.generation import eos_token_ids, sample_responses
from tisdpo.evaluation.prompts import PromptItem, load_prompts
from tisdpo.modeling import distributed_state, load_model, load_tokenizer_for
from tisdpo.scoring import score_groups
from tisdpo.version import __version__
from tisdpo.weights.prompts import ContrastivePrompt, resolve_prompt

if TYPE_CHECKING:
    from tisdpo.config import DataArguments, DlmaArguments, ModelArguments

logger = logging.getLogger(__name__)


def as_response(text: str, chat: bool) -> str | list[dict[str, str]]:
    """A sampled response in the prompt's format: conversational prompts get an assistant message."""
    return [{"role": "assistant", "content": text}] if chat else text


def dlma_scores(
    model: Any,
    pair_tokenizer: PairTokenizer,
    rows: list[dict[str, Any]],
    positive: ContrastivePrompt,
    negative: ContrastivePrompt,
    batch_size: int,
) -> list[float | None]:
    """R for each pair (None when truncation leaves no completion token), teacher-forced on the trainer's
    completion ids under each contrastive prompt."""
    positive_groups, negative_groups, scored = [], [], []
    for index, row in enumerate(rows):
        pair = pair_tokenizer.tokenize(row)
        if pair is None:
            continue
        responses = [pair.chosen_ids, pair.rejected_ids]
        positive_groups.append((pair_tokenizer.contrast_context(row, positive.apply, pair).ids, responses))
        negative_groups.append((pair_tokenizer.contrast_context(row, negative.apply, pair).ids, responses))
        scored.append(index)
    pad = pair_tokenizer.tokenizer.pad_token_id
    # Each contrastive context once for both responses: per pair, [log p(chosen), log p(rejected)].
    positive_logps, negative_logps = (
        [[sum(logps) for logps in group] for group in score_groups(model, groups, pad, batch_size, progress=False)]
        for groups in (positive_groups, negative_groups)
    )
    scores: list[float | None] = [None] * len(rows)
    for index, (pos, neg) in zip(scored, zip(positive_logps, negative_logps)):
        scores[index] = (pos[0] - neg[0]) - (pos[1] - neg[1])
    return scores


def generate_pairs(
    model: Any,
    pair_tokenizer: PairTokenizer,
    shard: list[PromptItem],
    positive: ContrastivePrompt,
    negative: ContrastivePrompt,
    eos: list[int],
    args: DlmaArguments,
) -> tuple[list[dict[str, Any]], list[int]]:
    """This process's pairs (a1 sampled under p+, a2 under p-, scored) and its skipped counts
    [an empty sample, no room for a completion under max_length]."""
    tokenizer = pair_tokenizer.tokenizer
    state = distributed_state()
    contexts = {
        role: [pair_tokenizer.contrast_prompt(item.prompt, prompt.apply) for item in shard]
        for role, prompt in (("positive", positive), ("negative", negative))
    }
    seed = args.seed + 1000 * state.process_index
    sampled = []
    for role in ("positive", "negative"):
        seed += 1
        samples = sample_responses(
            model,
            [context.ids for context in contexts[role]],
            1,
            eos,
            tokenizer.pad_token_id,
            args.max_new_tokens,
            args.temperature,
            args.top_p,
            seed=seed,
            batch_size=args.generation_batch_size,
            desc=f"sampling ({role})",
            progress=state.is_main_process,
        )
        sampled.append([tokenizer.decode(s[0], skip_special_tokens=True) for s in samples])
    kept = [k for k in range(len(shard)) if sampled[0][k].strip() and sampled[1][k].strip()]
    pairs = [
        {
            "source_index": shard[k].source_index,
            "prompt": shard[k].prompt,
            "chosen": as_response(sampled[0][k], shard[k].chat),
            "rejected": as_response(sampled[1][k], shard[k].chat),
            "prompt_cut": contexts["positive"][k].cut,
        }
        for k in kept
    ]
    scores = dlma_scores(model, pair_tokenizer, pairs, positive, negative, args.batch_size)
    records = [{**pair, "dlma_score": float(score)} for pair, score in zip(pairs, scores) if score is not None]
    return records, [len(shard) - len(kept), len(pairs) - len(records)]


@dataclass
class DlmaPairs:
    """The generated pairs (in prompt order) and their provenance (``<file>.meta.json``)."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any]


def generate_dlma_pairs(model_args: ModelArguments, data_args: DataArguments, args: DlmaArguments) -> DlmaPairs | None:
    """Sample and score the pairs of every prompt of ``--dataset_name`` (shared among processes, gathered
    on the main one). None on non-main processes."""
    from accelerate.utils import gather_object

    model_name, dataset = model_args.model_name_or_path, data_args.dataset_name
    positive, negative = resolve_prompt(args.positive_prompt), resolve_prompt(args.negative_prompt)
    state = distributed_state()
    tokenizer = load_tokenizer_for(model_args)
    pair_tokenizer = PairTokenizer(tokenizer, data_args.max_length, data_args.max_prompt_length)
    items = load_prompts(
        dataset, data_args.dataset_split, args.max_prompts, args.prompt_column, None, data_args.prompt_template
    )
    model = load_model(model_args, model_name).to(state.device)
    eos = eos_token_ids(tokenizer, model)
    with state.split_between_processes(list(range(len(items)))) as mine:
        records, skipped = generate_pairs(
            model, pair_tokenizer, [items[i] for i in mine], positive, negative, eos, args
        )
    if state.num_processes > 1:
        gathered = [row for part in gather_object([records]) for row in part]
        skipped = [sum(counts) for counts in zip(*gather_object([skipped]))]
    else:
        gathered = records
    if not state.is_main_process:
        return None
    gathered.sort(key=lambda row: row.pop("source_index"))
    prompts_cut = sum(row.pop("prompt_cut") for row in gathered)
    meta = {
        "method": "dlma",
        "model": model_name,
        "dataset": dataset,
        "positive_prompt": dataclasses.asdict(positive),
        "negative_prompt": dataclasses.asdict(negative),
        "tokenizer": model_args.tokenizer_name_or_path or model_name,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "rows": len(gathered),
        "skipped_empty": skipped[0],
        "skipped_no_room": skipped[1],
        "prompts_cut": prompts_cut,
        "max_length": data_args.max_length,
        "max_prompt_length": data_args.max_prompt_length,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "tisdpo_version": __version__,
    }
    return DlmaPairs(gathered, meta)
