"""``tisdpo dlma generate``: preference pairs without human labels (DLMA, Liu et al. 2024).

For each prompt q the model samples a1 under the positive prompt p+ and a2 under the negative
prompt p-, and scores the pair with the same model under both prompts:

    R = [log p(a1 | p+, q) - log p(a1 | p-, q)] - [log p(a2 | p+, q) - log p(a2 | p-, q)]

The output rows are ``prompt``, ``chosen`` (a1), ``rejected`` (a2) and ``dlma_score`` (R): a plain
preference file for ``tisdpo train --loss_type dlma`` (DPO with R as a margin), ``tisdpo weights``
and TIS-DPO. Log-probs are teacher-forced on the responses as the trainer tokenizes them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from tisdpo import __version__
from tisdpo.commands.common import distributed_state, load_model, load_tokenizer_for, require
from tisdpo.config import DataArguments, ModelArguments, parse_config
from tisdpo.data.tokenize import PairTokenizer, tokenizer_fingerprint
from tisdpo.errors import UserError
from tisdpo.evaluation.generation import eos_token_ids, sample_responses
from tisdpo.evaluation.prompts import PromptItem, load_prompts
from tisdpo.scoring import score_sequences
from tisdpo.weights.io import check_output_extension, write_meta, write_rows
from tisdpo.weights.prompts import ContrastivePrompt, resolve_prompt

logger = logging.getLogger(__name__)
USAGE = "usage: tisdpo dlma generate --model_name_or_path M --dataset_name PROMPTS --output_file pairs.jsonl [flags]"


@dataclass
class DlmaArguments:
    output_file: str | None = field(
        default=None, metadata={"help": "Where the generated pairs go (.jsonl or .parquet)."}
    )
    positive_prompt: str = field(
        default="dlma_harmless", metadata={"help": "Preset name or text (template with {prompt}, or a system text)."}
    )
    negative_prompt: str = field(
        default="dlma_harmful", metadata={"help": "Preset name or text for the negative side."}
    )
    max_new_tokens: int = field(default=128, metadata={"help": "Longest sampled response."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    generation_batch_size: int = field(default=16, metadata={"help": "Prompts per generate() call."})
    batch_size: int = field(default=16, metadata={"help": "Sequences per scoring forward."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N distinct prompts."})
    prompt_column: str | None = field(
        default=None, metadata={"help": "Column holding the prompt (default: prompt / post / the pair's prompt)."}
    )
    seed: int = field(
        default=0, metadata={"help": "Sampling seed (each process and side gets its own, derived from it)."}
    )


def contrast_ids(item: PromptItem, prompt: ContrastivePrompt, pair_tokenizer: PairTokenizer) -> list[int]:
    """Token ids of the prompt under a contrastive prompt, tokenized as training does."""
    applied = prompt.apply(item.prompt)
    if isinstance(applied, list):
        text = pair_tokenizer.tokenizer.apply_chat_template(applied, tokenize=False, add_generation_prompt=True)
        return pair_tokenizer.truncate_prompt(pair_tokenizer.encode_prompt(text, True))
    return pair_tokenizer.truncate_prompt(pair_tokenizer.encode_prompt(applied, False))


def dlma_scores(
    model: Any,
    pair_tokenizer: PairTokenizer,
    positive: list[list[int]],
    negative: list[list[int]],
    a1: list[list[int]],
    a2: list[list[int]],
    batch_size: int,
) -> list[float]:
    """R for each prompt, from teacher-forced sequence log-probs under both contexts."""
    sequences = []
    for pos, neg, first, second in zip(positive, negative, a1, a2):
        sequences += [(pos, first), (neg, first), (pos, second), (neg, second)]
    logps = [
        sum(values)
        for values in score_sequences(
            model, sequences, pair_tokenizer.tokenizer.pad_token_id, batch_size, progress=False
        )
    ]
    return [(logps[4 * i] - logps[4 * i + 1]) - (logps[4 * i + 2] - logps[4 * i + 3]) for i in range(len(positive))]


def run(argv: list[str]) -> None:
    if not argv or argv[0] != "generate":
        raise UserError(f"unknown dlma action {argv[0]!r}; {USAGE}" if argv else USAGE)
    model_args, data_args, args = parse_config(
        [ModelArguments, DataArguments, DlmaArguments], argv[1:], prog="tisdpo dlma generate"
    )
    output = require(args.output_file, "output_file", "tisdpo dlma generate")
    check_output_extension(output)
    model_name = require(model_args.model_name_or_path, "model_name_or_path", "tisdpo dlma generate")
    dataset = require(data_args.dataset_name, "dataset_name", "tisdpo dlma generate")
    positive, negative = resolve_prompt(args.positive_prompt), resolve_prompt(args.negative_prompt)
    from accelerate.utils import gather_object

    state = distributed_state()
    tokenizer = load_tokenizer_for(model_args)
    pair_tokenizer = PairTokenizer(tokenizer, data_args.max_length, data_args.max_prompt_length)
    items = load_prompts(
        dataset, data_args.dataset_split, args.max_prompts, args.prompt_column, None, data_args.prompt_template
    )
    model = load_model(model_args, model_name).to(state.device)
    eos = eos_token_ids(tokenizer, model)
    records: list[dict[str, Any]] = []
    with state.split_between_processes(list(range(len(items)))) as mine:
        shard = [items[i] for i in mine]
        pos_ids = [contrast_ids(item, positive, pair_tokenizer) for item in shard]
        neg_ids = [contrast_ids(item, negative, pair_tokenizer) for item in shard]
        seed = args.seed + 1000 * state.process_index
        sampled = []
        for role, ids in (("positive", pos_ids), ("negative", neg_ids)):
            seed += 1
            samples = sample_responses(
                model,
                ids,
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
        completions = [[pair_tokenizer.encode_completion(sampled[side][k], False) for k in kept] for side in (0, 1)]
        scores = dlma_scores(
            model,
            pair_tokenizer,
            [pos_ids[k] for k in kept],
            [neg_ids[k] for k in kept],
            completions[0],
            completions[1],
            args.batch_size,
        )
        for score, k in zip(scores, kept):
            records.append(
                {
                    "source_index": shard[k].source_index,
                    "prompt": shard[k].prompt,
                    "chosen": sampled[0][k],
                    "rejected": sampled[1][k],
                    "dlma_score": float(score),
                }
            )
    gathered = [row for part in gather_object([records]) for row in part] if state.num_processes > 1 else records
    if not state.is_main_process:
        return
    gathered.sort(key=lambda row: row.pop("source_index"))
    write_rows(output, gathered)
    write_meta(
        output,
        {
            "method": "dlma",
            "model": model_name,
            "dataset": dataset,
            "positive_prompt": dataclasses.asdict(positive),
            "negative_prompt": dataclasses.asdict(negative),
            "tokenizer": model_args.tokenizer_name_or_path or model_name,
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
            "rows": len(gathered),
            "skipped_empty": len(items) - len(gathered),
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "tisdpo_version": __version__,
        },
    )
    logger.info(
        "wrote %d DLMA pairs to %s (%d prompts skipped: an empty sample)",
        len(gathered),
        output,
        len(items) - len(gathered),
    )
