"""``tisdpo evaluate --generate``: sample, score, estimate KL, and write the outputs.

Work is split across processes by prompt (``accelerate launch``: ``PartialState.split_between_processes``);
every process runs the models on its own prompts, one model in memory at a time:

1. the policy samples ``num_samples`` responses per prompt and scores them teacher forced;
2. the reference scores the same responses (KL) and, when it is the baseline, samples its own;
3. a baseline other than the reference samples its responses (with its own tokenizer when it has a
   different one);
4. each scorer scores both sides.

Records are gathered with ``gather_object`` and the main process writes, in ``--output_dir``:

* ``generations.jsonl``: one line per (prompt, sample): ``prompt_index``, ``source_index`` (row of
  the dataset), ``sample``, ``prompt`` (text as the policy saw it), ``messages`` (message prompts),
  ``references``, ``response``, ``baseline_response``, ``scores`` and ``baseline_scores`` (every
  scorer key), ``reward``, ``baseline_reward`` and ``win`` (primary reward), ``kl``,
  ``policy_logp``, ``ref_logp``, ``length`` / ``baseline_length`` (tokens, EOS excluded),
  ``finished`` / ``baseline_finished`` (ended with EOS);
* ``eval_results.json``: the ``gen/*`` metrics (:mod:`tisdpo.evaluation.metrics`) plus the
  preference metrics when asked, and the sampling settings (``gen/temperature`` ...);
* ``eval_results.md``: the same as Markdown tables.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import torch

from tisdpo.config import DataArguments, GenerationArguments, ModelArguments, TisdpoConfig
from tisdpo.data.tokenize import PairTokenizer, tokenizer_fingerprint
from tisdpo.errors import UserError, require
from tisdpo.evaluation.generation import eos_token_ids, sample_responses, sequence_logps
from tisdpo.evaluation.metrics import add_win_values, summarize
from tisdpo.evaluation.prompts import PromptItem, encode_prompts, load_prompts
from tisdpo.evaluation.report import run_markdown, write_text
from tisdpo.evaluation.scorers import (
    CallableScorer,
    RewardModelScorer,
    RougeScorer,
    SafetyClassifierScorer,
    Scorer,
    ScoringPrompt,
    load_callable,
)
from tisdpo.modeling import check_model_folder, load_model, load_tokenizer, load_tokenizer_for, looks_local
from tisdpo.utils import atomic_path, write_json

logger = logging.getLogger(__name__)


class ModelSlot:
    """Holds at most one causal LM, loading by name and freeing the previous one."""

    def __init__(self, model_args: ModelArguments, device: torch.device) -> None:
        self.model_args, self.device = model_args, device
        self.name: str | None = None
        self.model: Any = None

    def get(self, name: str) -> Any:
        if self.name != name:
            self.free()
            self.model = load_model(self.model_args, name).to(self.device)
            self.name = name
        return self.model

    def free(self) -> None:
        self.model, self.name = None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def scorer_factories(
    gen_args: GenerationArguments, model_args: ModelArguments, device: Any
) -> list[Callable[[], Scorer]]:
    """One factory per requested scorer; checks what is cheap to check before any generation."""
    common = {
        "dtype": model_args.dtype,
        "trust_remote_code": model_args.trust_remote_code,
        "batch_size": gen_args.scorer_batch_size,
        "max_length": gen_args.scorer_max_length,
        "device": device,
    }
    factories: list[Callable[[], Scorer]] = []
    if gen_args.scorer:
        load_callable(gen_args.scorer)  # an import error shows before the models run
        factories.append(lambda: CallableScorer(gen_args.scorer))
    for path in (gen_args.reward_model_name_or_path, gen_args.safety_classifier_name_or_path):
        if path and looks_local(path):
            check_model_folder(path)
    trust = {"trust_remote_code": model_args.trust_remote_code}
    if gen_args.reward_model_name_or_path:
        RewardModelScorer.check(gen_args.reward_model_name_or_path, **trust)
        factories.append(lambda: RewardModelScorer(gen_args.reward_model_name_or_path, **common))
    if gen_args.safety_classifier_name_or_path:
        SafetyClassifierScorer.check(gen_args.safety_classifier_name_or_path, safe_label=gen_args.safe_label, **trust)
        factories.append(
            lambda: SafetyClassifierScorer(gen_args.safety_classifier_name_or_path, gen_args.safe_label, **common)
        )
    return factories


def baseline_pair_tokenizer(
    name: str,
    policy_names: tuple[str, ...],
    pair_tokenizer: PairTokenizer,
    data_args: DataArguments,
    trust_remote_code: bool = False,
) -> PairTokenizer:
    """The baseline's own tokenizer when it has a different one, else the policy's."""
    if name in policy_names:
        return pair_tokenizer
    try:
        tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
    except UserError:  # no tokenizer of its own: it shares the policy's
        return pair_tokenizer
    if tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(pair_tokenizer.tokenizer):
        return pair_tokenizer
    logger.info("the baseline %s has its own tokenizer; its prompts are encoded with it", name)
    return PairTokenizer(tokenizer, data_args.max_length, data_args.max_prompt_length)


def sampling_seed(seed: int, role: str, process_index: int) -> int:
    """Seed of one model's sampling: a function of --seed, the role and the process.

    The policy and the baseline get different random streams, so that their samples are independent
    (the win rate compares independent draws) even when both are the same model.
    """
    import numpy as np

    role_id = {"policy": 0, "baseline": 1}[role]
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, role_id, process_index]).generate_state(1)[0])


def flatten(samples: list[list[list[int]]]) -> list[list[int]]:
    return [ids for per_prompt in samples for ids in per_prompt]


def evaluate_generations(
    model_args: ModelArguments,
    data_args: DataArguments,
    config: TisdpoConfig,
    gen_args: GenerationArguments,
    extra_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from accelerate import PartialState
    from accelerate.utils import gather_object

    command = "tisdpo evaluate --generate"
    model_name = require(model_args.model_name_or_path, "model_name_or_path", command)
    if not model_args.ref_model_name_or_path:
        raise UserError(
            f"{command} needs --ref_model_name_or_path (the reference of the KL estimate, and the default baseline)"
        )
    ref_name = model_args.ref_model_name_or_path
    baseline_name = gen_args.baseline_model_name_or_path or ref_name
    dataset_name = data_args.eval_dataset_name or require(data_args.dataset_name, "dataset_name", command)
    split = data_args.eval_dataset_split if data_args.eval_dataset_name else data_args.dataset_split
    if not gen_args.exact_sampling:
        logger.warning(
            "temperature %s, top_p %s, top_k %s: gen/kl is the mean log-ratio under this sampler, "
            "not an unbiased estimate of KL(policy || reference) (that needs 1, 1, 0)",
            gen_args.temperature,
            gen_args.top_p,
            gen_args.top_k,
        )

    state = PartialState()
    factories = scorer_factories(gen_args, model_args, state.device)
    tokenizer = load_tokenizer_for(model_args)
    pair_tokenizer = PairTokenizer(tokenizer, data_args.max_length, data_args.max_prompt_length)
    items = load_prompts(
        dataset_name,
        split,
        gen_args.max_prompts,
        gen_args.prompt_column,
        gen_args.reference_column,
        data_args.prompt_template,
    )
    has_references = any(item.references for item in items)
    if has_references:
        factories.append(RougeScorer)
    if not factories:
        logger.warning("no scorer given (--scorer, --reward_model_name_or_path ...): only KL and lengths are measured")
    texts, prompt_ids = encode_prompts(items, pair_tokenizer)
    baseline_tokenizer = baseline_pair_tokenizer(
        baseline_name, (model_name, ref_name), pair_tokenizer, data_args, model_args.trust_remote_code
    )
    baseline_prompt_ids = (
        prompt_ids if baseline_tokenizer is pair_tokenizer else encode_prompts(items, baseline_tokenizer)[1]
    )
    if state.is_main_process:
        logger.info(
            "%s: %d prompts x %d samples, on %d process(es)",
            dataset_name,
            len(items),
            gen_args.num_samples,
            state.num_processes,
        )

    with state.split_between_processes(list(range(len(items)))) as shard:
        shard = list(shard)
    records = generate_shard(
        shard,
        items,
        texts,
        prompt_ids,
        baseline_prompt_ids,
        pair_tokenizer,
        baseline_tokenizer,
        model_name,
        ref_name,
        baseline_name,
        model_args,
        config,
        gen_args,
        factories,
        state,
    )
    records = gather_object(records)
    metrics: dict[str, Any] = dict(extra_metrics or {})
    if not state.is_main_process:
        return metrics
    records.sort(key=lambda r: (r["prompt_index"], r["sample"]))
    add_win_values(records)
    metrics.update(summarize(records, len(items), gen_args.num_samples, config.seed, gen_args.bootstrap_samples))
    metrics.update(
        {
            "gen/max_new_tokens": gen_args.max_new_tokens,
            "gen/temperature": gen_args.temperature,
            "gen/top_p": gen_args.top_p,
            "gen/top_k": gen_args.top_k,
            "gen/seed": config.seed,
        }
    )
    out = config.output_dir
    with atomic_path(os.path.join(out, "generations.jsonl")) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    context = {
        "policy": model_name,
        "reference": ref_name,
        "baseline": baseline_name,
        "prompts": f"{dataset_name} ({split})" if not os.path.exists(dataset_name) else dataset_name,
        "scorer": gen_args.scorer,
        "reward model": gen_args.reward_model_name_or_path,
        "safety classifier": gen_args.safety_classifier_name_or_path,
        "sampling": f"temperature {gen_args.temperature}, top_p {gen_args.top_p}, top_k {gen_args.top_k}, "
        f"max_new_tokens {gen_args.max_new_tokens}, seed {config.seed}",
    }
    write_text(os.path.join(out, "eval_results.md"), run_markdown(metrics, {k: v for k, v in context.items() if v}))
    # Written last: eval_results.json marks a finished evaluation (the pipeline skips a checkpoint that has one).
    write_json(os.path.join(out, "eval_results.json"), metrics)
    summary = ", ".join(
        f"{key[4:]} {metrics[key]:.4g}"
        for key in ("gen/reward_mean", "gen/baseline_reward_mean", "gen/win_rate", "gen/kl", "gen/length_mean")
        if key in metrics
    )
    logger.info("generations: %s (written to %s)", summary, out)
    return metrics


def generate_shard(
    shard: list[int],
    items: list[PromptItem],
    texts: list[str],
    prompt_ids: list[list[int]],
    baseline_prompt_ids: list[list[int]],
    pair_tokenizer: PairTokenizer,
    baseline_tokenizer: PairTokenizer,
    model_name: str,
    ref_name: str,
    baseline_name: str,
    model_args: ModelArguments,
    config: TisdpoConfig,
    gen_args: GenerationArguments,
    factories: list[Callable[[], Scorer]],
    state: Any,
) -> list[dict[str, Any]]:
    """Samples, log-probs and scores of this process's prompts (one record per prompt and sample)."""
    if not shard:
        return []
    k = gen_args.num_samples
    progress = state.is_main_process
    slot = ModelSlot(model_args, state.device)
    sampling = {
        "num_samples": k,
        "max_new_tokens": gen_args.max_new_tokens,
        "temperature": gen_args.temperature,
        "top_p": gen_args.top_p,
        "top_k": gen_args.top_k,
        "batch_size": gen_args.generation_batch_size,
        "progress": progress,
    }
    scoring = {
        "batch_size": gen_args.generation_batch_size,
        "logprob_path": config.logprob_path,
        "chunk_size": config.lm_head_chunk_size,
        "progress": progress,
    }
    tokenizer = pair_tokenizer.tokenizer
    pad = tokenizer.pad_token_id
    shard_prompts = [prompt_ids[i] for i in shard]
    repeated_prompts = [ids for ids in shard_prompts for _ in range(k)]

    def sample(name: str, tok: PairTokenizer, ids: list[list[int]], role: str) -> list[list[int]]:
        model = slot.get(name)
        eos = eos_token_ids(tok.tokenizer, model)
        seed = sampling_seed(config.seed, role, state.process_index)
        pad_id = tok.tokenizer.pad_token_id
        return flatten(
            sample_responses(
                model, ids, eos_ids=eos, pad_token_id=pad_id, seed=seed, desc=f"sampling ({role})", **sampling
            )
        )

    policy_ids = sample(model_name, pair_tokenizer, shard_prompts, "policy")
    policy_eos = eos_token_ids(tokenizer, slot.model)
    policy_logps = sequence_logps(slot.model, repeated_prompts, policy_ids, pad, desc="log-probs (policy)", **scoring)
    if ref_name == model_name:
        ref_logps = list(policy_logps)
    else:
        ref_logps = sequence_logps(
            slot.get(ref_name), repeated_prompts, policy_ids, pad, desc="log-probs (reference)", **scoring
        )
    if gen_args.sample_baseline:
        baseline_ids = sample(baseline_name, baseline_tokenizer, [baseline_prompt_ids[i] for i in shard], "baseline")
        baseline_eos = eos_token_ids(baseline_tokenizer.tokenizer, slot.model)
    slot.free()

    def decode(tok: Any, ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=True)

    records = []
    for n, (i, sample_index) in enumerate((i, s) for i in shard for s in range(k)):
        item = items[i]
        finished = bool(policy_ids[n]) and policy_ids[n][-1] in policy_eos
        record: dict[str, Any] = {
            "prompt_index": i,
            "source_index": item.source_index,
            "sample": sample_index,
            "prompt": texts[i],
        }
        if item.chat:
            record["messages"] = item.prompt
        if item.references:
            record["references"] = list(item.references)
        record.update(
            {
                "response": decode(tokenizer, policy_ids[n]),
                "scores": {},
                "kl": policy_logps[n] - ref_logps[n],
                "policy_logp": policy_logps[n],
                "ref_logp": ref_logps[n],
                "length": len(policy_ids[n]) - int(finished),
                "finished": finished,
            }
        )
        if gen_args.sample_baseline:
            baseline_finished = bool(baseline_ids[n]) and baseline_ids[n][-1] in baseline_eos
            record.update(
                {
                    "baseline_response": decode(baseline_tokenizer.tokenizer, baseline_ids[n]),
                    "baseline_scores": {},
                    "baseline_length": len(baseline_ids[n]) - int(baseline_finished),
                    "baseline_finished": baseline_finished,
                }
            )
        records.append(record)

    prompts = [
        ScoringPrompt(texts[i], items[i].prompt if items[i].chat else None, items[i].references)
        for i in shard
        for _ in range(k)
    ]
    for factory in factories:
        scorer = factory()
        baseline_responses = [r["baseline_response"] for r in records] if gen_args.sample_baseline else []
        try:
            both = scorer.score(
                prompts + prompts[: len(baseline_responses)], [r["response"] for r in records] + baseline_responses
            )
        finally:
            scorer.close()
        for key, values in both.items():
            for n, record in enumerate(records):
                record["scores"][key] = values[n]
                if gen_args.sample_baseline:
                    record["baseline_scores"][key] = values[len(records) + n]
    return records
