"""Token rewards from a contrastive pair, turned into TIS-DPO weights (what ``tisdpo weights`` runs).

    r_t = log p+(y_t | context+) - log p-(y_t | context-)      (teacher-forced, per response token)

Sources: two models (S: SFT on chosen vs on rejected; D: DPO vs reverse DPO), or one model under a
positive and a negative prompt (P). The completion tokens are exactly the trainer's (same
tokenization path, EOS included). Work is split into parts written atomically beside the output file
(``<output_file>.parts``), so a killed run resumes where it stopped; under ``accelerate launch`` the
parts are shared among processes and the main process merges them in input order.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tisdpo.config import WeightsArguments, transform_config
from tisdpo.data.formats import RawRecords, normalize_records, read_records
from tisdpo.data.load import format_options, read_pairs
from tisdpo.data.prepare import check_numbers, check_token_ids
from tisdpo.data.tokenize import PairTokenizer, PromptContext, TokenizedPair, tokenizer_fingerprint
from tisdpo.errors import UserError
from tisdpo.modeling import distributed_state, load_model, load_model_pair, load_tokenizer
from tisdpo.scoring import score_groups
from tisdpo.utils import atomic_path, digest, file_identity
from tisdpo.version import __version__
from tisdpo.weights.io import read_meta, write_rows
from tisdpo.weights.prompts import ContrastivePrompt, resolve_prompt
from tisdpo.weights.transforms import WeightTransformConfig, content_mask, normalize_weights, transform_pair

if TYPE_CHECKING:
    from tisdpo.config import DataArguments, ModelArguments

logger = logging.getLogger(__name__)


# -- rewards to weights ---------------------------------------------------------------------------
def check_rewards(row: dict[str, Any], source: str, where: str) -> None:
    """Stored token rewards must be one finite number per completion token."""
    for side in ("chosen", "rejected"):
        key = f"{side}_token_rewards"
        rewards = row.get(key)
        if rewards is None:
            raise UserError(
                "is missing: --from_rewards needs a file written by `tisdpo weights`",
                source=source,
                location=where,
                field=key,
            )
        rewards = check_numbers(rewards, "reward", source, where, key)
        bad = next((i for i, r in enumerate(rewards) if not math.isfinite(r)), None)
        if bad is not None:
            raise UserError(
                f"reward {bad} is {rewards[bad]} (expected a finite number)", source=source, location=where, field=key
            )
        ids = row.get(f"{side}_token_ids")
        if ids is not None and len(check_token_ids(ids, source, where, f"{side}_token_ids")) != len(rewards):
            raise UserError(
                f"has {len(rewards)} rewards but {side}_token_ids has {len(ids)} tokens (expected one reward per token)",
                source=source,
                location=where,
                field=key,
            )


STRUCTURAL_KEYS: tuple[str, str] = ("chosen_structural_positions", "rejected_structural_positions")


def structural_positions(row: dict[str, Any]) -> tuple[list[int] | None, list[int] | None]:
    """The structural token positions a weights row records for each side (None: not recorded)."""
    return row.get(STRUCTURAL_KEYS[0]), row.get(STRUCTURAL_KEYS[1])


def add_weights(
    row: dict[str, Any], config: WeightTransformConfig, example_index: int, source: str = "", where: str = ""
) -> dict[str, Any]:
    """The row with ``chosen_weights`` / ``rejected_weights`` from its token rewards (structural tokens
    weight 1 unless ``config.structural`` is ``estimated``)."""
    try:
        chosen, rejected = transform_pair(
            row["chosen_token_rewards"],
            row["rejected_token_rewards"],
            config,
            example_index,
            structural_positions(row),
        )
    except ValueError as err:  # e.g. a model gave a token probability 0: reward -inf
        raise UserError(
            f"cannot turn the token rewards into weights: {err}", source=source or None, location=where or None
        ) from None
    return {
        **row,
        "chosen_weights": [float(w) for w in chosen],
        "rejected_weights": [float(w) for w in rejected],
    }


def normalize_rows(rows: list[dict[str, Any]], config: WeightTransformConfig) -> list[dict[str, Any]]:
    """The rows with their ``chosen_weights`` / ``rejected_weights`` rescaled as ``config.normalize`` says
    (:func:`~tisdpo.weights.transforms.normalize_weights`, over content tokens only unless
    ``config.structural`` is ``estimated``; ``none`` returns the rows unchanged)."""
    if config.normalize == "none":
        return rows
    weights, masks = [], []
    for row in rows:
        for side, positions in zip(("chosen", "rejected"), structural_positions(row)):
            weights.append(row[f"{side}_weights"])
            masks.append(content_mask(len(row[f"{side}_weights"]), positions, config))
    flat = normalize_weights(weights, config.normalize, masks)
    out = []
    for index, row in enumerate(rows):
        chosen, rejected = flat[2 * index], flat[2 * index + 1]
        out.append(
            {**row, "chosen_weights": [float(w) for w in chosen], "rejected_weights": [float(w) for w in rejected]}
        )
    return out


def rederive_weights(from_rewards: str, config: WeightTransformConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``--from_rewards``: new weights from a weights file's stored rewards, without any model; the rows and
    their provenance (the file's, with the new transform)."""
    records = read_records(from_rewards)
    rows = []
    for index, row in enumerate(records.rows):
        check_rewards(row, records.source, records.where(index))
        rows.append(add_weights(row, config, index, records.source, records.where(index)))
    if not rows:
        raise UserError("the file has no rows", source=from_rewards)
    unmarked = sum(None in structural_positions(row) for row in records.rows)
    if unmarked and config.structural == "neutral":
        logger.warning(
            "%s: %d of %d row(s) do not record their structural tokens (written before structural tokens were recorded): their "
            "end-of-turn/EOS tokens are weighted like words; re-run `tisdpo weights` to give them weight 1",
            from_rewards,
            unmarked,
            len(rows),
        )
    meta = read_meta(from_rewards) or {}
    return normalize_rows(rows, config), {
        **meta,
        "transform": dataclasses.asdict(config),
        "derived_from": from_rewards,
    }


# -- the contrast ---------------------------------------------------------------------------------
@dataclass
class Contrast:
    """The two scorers: a (model, prompt) for each side; P shares one model."""

    positive_model: Any
    negative_model: Any
    positive_prompt: ContrastivePrompt | None = None
    negative_prompt: ContrastivePrompt | None = None


def build_contrast(model_args: ModelArguments, args: WeightsArguments) -> tuple[Contrast, dict[str, Any], str]:
    """Load the scorers; return them, their provenance and the tokenizer's name."""
    device = distributed_state().device
    if args.positive_model_name_or_path or args.negative_model_name_or_path:
        if not (args.positive_model_name_or_path and args.negative_model_name_or_path):
            raise UserError("methods S and D need both --positive_model_name_or_path and --negative_model_name_or_path")
        if args.positive_prompt or args.negative_prompt:
            raise UserError(
                "give either two models (S, D) or one model with --positive_prompt/--negative_prompt (P), not both"
            )
        pair = load_model_pair(model_args, args.positive_model_name_or_path, args.negative_model_name_or_path)
        positive, negative = (model.to(device) for model in pair)
        if positive.config.vocab_size != negative.config.vocab_size:
            raise UserError(
                f"the two models have different vocabularies ({positive.config.vocab_size} vs {negative.config.vocab_size})",
                source=args.negative_model_name_or_path,
            )
        provenance = {
            "method": "models",
            "positive_model": args.positive_model_name_or_path,
            "negative_model": args.negative_model_name_or_path,
        }
        return (
            Contrast(positive, negative),
            provenance,
            model_args.tokenizer_name_or_path or args.positive_model_name_or_path,
        )
    if not (model_args.model_name_or_path and args.positive_prompt and args.negative_prompt):
        raise UserError(
            "give --positive_model_name_or_path and --negative_model_name_or_path (S, D), or --model_name_or_path with --positive_prompt and --negative_prompt (P)"
        )
    model = load_model(model_args, model_args.model_name_or_path).to(device)
    positive, negative = resolve_prompt(args.positive_prompt), resolve_prompt(args.negative_prompt)
    provenance = {
        "method": "prompt",
        "model": model_args.model_name_or_path,
        "positive_prompt": dataclasses.asdict(positive),
        "negative_prompt": dataclasses.asdict(negative),
    }
    return (
        Contrast(model, model, positive, negative),
        provenance,
        model_args.tokenizer_name_or_path or model_args.model_name_or_path,
    )


def check_tokenizer_matches(contrast_models: list[str], fingerprint: str, trust_remote_code: bool) -> None:
    for name in contrast_models:
        if (
            os.path.exists(os.path.join(name, "tokenizer_config.json"))
            and tokenizer_fingerprint(load_tokenizer(name, trust_remote_code)) != fingerprint
        ):
            raise UserError(
                "this model's tokenizer differs from the one used for scoring; both contrastive models must share one tokenizer",
                source=name,
            )


# -- scoring --------------------------------------------------------------------------------------
def scoring_context(
    pair_tokenizer: PairTokenizer,
    row: dict[str, Any],
    pair: TokenizedPair,
    prompt: ContrastivePrompt | None,
    where: str,
) -> PromptContext:
    """Prompt ids of one side's scoring context: the trainer's own, or the user's prompt (cut to
    max_prompt_length, never the contrastive text) under a contrastive prompt."""
    if prompt is None:
        return PromptContext(pair.prompt_ids, pair.prompt_cut)
    return pair_tokenizer.contrast_context(row, prompt.apply, pair, where)


def score_part(
    rows: list[dict[str, Any]],
    pair_tokenizer: PairTokenizer,
    contrast: Contrast,
    args: WeightsArguments,
    where: list[str],
) -> list[dict[str, Any]]:
    """One line per row: ``result`` (token ids and rewards; None for a row truncation drops) and
    ``prompt_cut`` (its prompt was longer than max_prompt_length)."""
    pairs = [pair_tokenizer.tokenize(row) for row in rows]
    kept = [i for i, pair in enumerate(pairs) if pair is not None]
    sides = {}
    cut = [False] * len(rows)
    for name, model, prompt in (
        ("positive", contrast.positive_model, contrast.positive_prompt),
        ("negative", contrast.negative_model, contrast.negative_prompt),
    ):
        groups = []
        for i in kept:
            context = scoring_context(pair_tokenizer, rows[i], pairs[i], prompt, where[i])
            cut[i] = cut[i] or context.cut
            groups.append((context.ids, [pairs[i].chosen_ids, pairs[i].rejected_ids]))
        scored = score_groups(
            model,
            groups,
            pair_tokenizer.tokenizer.pad_token_id,
            args.batch_size,
            logprob_path=args.logprob_path,
            chunk_size=args.lm_head_chunk_size,
            max_tokens=args.max_batch_tokens,
            desc=f"{name} log-probs",
            progress=False,
            shared_prompt=args.shared_prompt,
        )
        sides[name] = [logps for group in scored for logps in group]
    out: list[dict[str, Any]] = [{"result": None, "prompt_cut": False} for _ in rows]
    for k, i in enumerate(kept):
        pos, neg = sides["positive"], sides["negative"]
        result = {
            "chosen_token_ids": pairs[i].chosen_ids,
            "rejected_token_ids": pairs[i].rejected_ids,
            "chosen_token_rewards": [a - b for a, b in zip(pos[2 * k], neg[2 * k])],
            "rejected_token_rewards": [a - b for a, b in zip(pos[2 * k + 1], neg[2 * k + 1])],
            STRUCTURAL_KEYS[0]: pairs[i].chosen_structural,
            STRUCTURAL_KEYS[1]: pairs[i].rejected_structural,
        }
        out[i] = {"result": result, "prompt_cut": cut[i]}
    return out


# -- resumable parts ------------------------------------------------------------------------------
# Options that cannot change what a part holds (token ids and rewards): where the output goes, and the
# weight transform (every ``weight_*`` flag), applied to the merged rewards after scoring. Every other
# option of every argument group is in the fingerprint of the parts, so none can be forgotten.
NOT_IN_PARTS = ("output_file", "from_rewards")
PARTS_FORMAT = 3  # part lines: {"result": ..., "prompt_cut": ...}; results record structural positions


def parts_dir(output_file: str) -> str:
    """Where the scored parts of a run writing ``output_file`` wait (removed once the file is written)."""
    return output_file + ".parts"


def part_options(args: WeightsArguments) -> dict[str, Any]:
    return {
        name: value
        for name, value in dataclasses.asdict(args).items()
        if name not in NOT_IN_PARTS and not name.startswith("weight_")
    }


def path_identity(name: str | None) -> Any:
    """What a fingerprint should know of a local file or folder (each file's size and time), else the name."""
    if name and os.path.isdir(name):
        return {entry.name: file_identity(entry.path) for entry in sorted(os.scandir(name), key=lambda e: e.name)}
    return file_identity(name) if name else None


def parts_fingerprint(
    model_args: ModelArguments,
    data_args: DataArguments,
    args: WeightsArguments,
    meta: dict[str, Any],
    rows: list[dict[str, Any]],
) -> str:
    """A hash of everything that decides the scored rows: parts with another one are not reused."""
    inputs = (
        data_args.dataset_name,
        model_args.model_name_or_path,
        model_args.tokenizer_name_or_path,
        args.positive_model_name_or_path,
        args.negative_model_name_or_path,
    )
    payload = {
        "format": PARTS_FORMAT,
        "model_args": dataclasses.asdict(model_args),
        "data_args": dataclasses.asdict(data_args),
        "args": part_options(args),
        "meta": meta,
        "inputs": [path_identity(name) for name in inputs],
        "source_rows": [row["source_index"] for row in rows],
    }
    return digest(payload)


def part_path(directory: str, start: int) -> str:
    return os.path.join(directory, f"part-{start:09d}.jsonl")


def score_in_parts(
    records: RawRecords,
    rows: list[dict[str, Any]],
    pair_tokenizer: PairTokenizer,
    contrast: Contrast,
    args: WeightsArguments,
    fingerprint: str,
) -> list[dict[str, Any]] | None:
    """Score all rows part by part (the lines of ``score_part``); finished parts survive a kill.
    Returns None on non-main processes."""
    from tqdm.auto import tqdm

    state = distributed_state()
    directory = parts_dir(args.output_file)
    stamp = os.path.join(directory, "fingerprint")
    if state.is_main_process:
        if os.path.isdir(directory) and (not os.path.exists(stamp) or Path(stamp).read_text() != fingerprint):
            logger.info("discarding parts of an earlier run with other inputs in %s", directory)
            shutil.rmtree(directory)
        os.makedirs(directory, exist_ok=True)
        with atomic_path(stamp) as tmp, open(tmp, "w") as handle:
            handle.write(fingerprint)
    state.wait_for_everyone()
    size = args.rows_per_part
    starts = list(range(0, len(rows), size))
    mine = [s for k, s in enumerate(starts) if k % state.num_processes == state.process_index]
    done = sum(os.path.exists(part_path(directory, s)) for s in starts)
    if done:
        logger.info("resuming: %d of %d parts already scored", done, len(starts))
    for start in tqdm(mine, desc="token rewards", disable=not state.is_main_process):
        path = part_path(directory, start)
        if os.path.exists(path):
            continue
        chunk = rows[start : start + size]
        where = [records.where(r["source_index"]) for r in chunk]
        write_rows(path, score_part(chunk, pair_tokenizer, contrast, args, where))
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    merged: list[dict[str, Any]] = []
    for start in starts:
        with open(part_path(directory, start), encoding="utf-8") as handle:
            merged.extend(json.loads(line) for line in handle)
    return merged


# -- end to end -----------------------------------------------------------------------------------
@dataclass
class EstimatedWeights:
    """What a weights file holds: its rows and their provenance (``<file>.meta.json``)."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any]


def estimate_weights(
    model_args: ModelArguments, data_args: DataArguments, args: WeightsArguments, records: RawRecords | None = None
) -> EstimatedWeights | None:
    """Score the pairs of ``--dataset_name`` (or the rows of ``records``) with the contrast the options name (in
    resumable parts beside ``args.output_file``) and turn the rewards into weights. None on non-main processes."""
    config = transform_config(args)
    contrast, provenance, tokenizer_name = build_contrast(model_args, args)
    tokenizer = load_tokenizer(tokenizer_name, model_args.trust_remote_code, model_args.revision)
    fingerprint = tokenizer_fingerprint(tokenizer)
    if provenance["method"] == "models":
        check_tokenizer_matches(
            [args.positive_model_name_or_path, args.negative_model_name_or_path],
            fingerprint,
            model_args.trust_remote_code,
        )
    pair_tokenizer = PairTokenizer(tokenizer, data_args.max_length, data_args.max_prompt_length)
    if records is None:
        records = read_pairs(data_args.dataset_name, data_args.dataset_split, data_args.max_samples)
    rows = normalize_records(
        records,
        format_options(data_args),
        data_args.skip_empty_responses,
        drop_identical=data_args.drop_identical_pairs,
    )
    meta = {
        **provenance,
        "dataset": data_args.dataset_name,
        "tokenizer": tokenizer_name,
        "tokenizer_fingerprint": fingerprint,
        "max_length": data_args.max_length,
        "max_prompt_length": data_args.max_prompt_length,
        "prompt_template": data_args.prompt_template,
        "reverse_pairs": data_args.reverse_pairs,
        "drop_identical_pairs": data_args.drop_identical_pairs,
        "dtype": model_args.dtype,
        "tisdpo_version": __version__,
    }
    scored = score_in_parts(
        records,
        rows,
        pair_tokenizer,
        contrast,
        args,
        parts_fingerprint(model_args, data_args, args, meta, rows),
    )
    if scored is None:
        return None
    output, dropped, cut = [], 0, 0
    for row, line in zip(rows, scored):
        result = line["result"]
        if result is None:
            dropped += 1
            continue
        cut += line["prompt_cut"]
        raw = records.rows[row["source_index"]]
        where = records.where(row["source_index"])
        output.append(add_weights({**raw, **result}, config, row["source_index"], records.source, where))
    if not output:
        raise UserError(
            f"no pair left after truncation (all {len(rows)} dropped); raise --max_length or lower --max_prompt_length",
            source=records.source,
        )
    if dropped:
        logger.warning(
            "%s: dropped %d of %d pair(s) whose prompt leaves no room for completion tokens (max_length=%s, max_prompt_length=%s)",
            records.source,
            dropped,
            len(rows),
            data_args.max_length,
            data_args.max_prompt_length,
        )
    if cut:
        logger.info(
            "%s: %d of %d pair(s) have a prompt longer than max_prompt_length=%s; its start was cut as for training%s",
            records.source,
            cut,
            len(output),
            data_args.max_prompt_length,
            " (the contrastive text is kept whole)" if provenance["method"] == "prompt" else "",
        )
    meta = {
        **meta,
        "transform": dataclasses.asdict(config),
        "rows": len(output),
        "dropped": dropped,
        "prompts_cut": cut,
    }
    return EstimatedWeights(normalize_rows(output, config), meta)
