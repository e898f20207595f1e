"""Reference log-probabilities computed once before training and cached by fingerprint.

Without TDPO-style KL terms the reference model only contributes ``log pi_ref(y_t)`` for each
completion token, which never changes during training; so we compute it once, store it beside the
data as ``ref_chosen_logps`` / ``ref_rejected_logps`` and hold no reference model while training.
The cache key covers the reference model's files, its dtype, the token ids of every pair and the
log-prob path, so a changed model or dataset never reuses a stale cache.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from tisdpo.errors import UserError
from tisdpo.logprobs import DEFAULT_CHUNK_SIZE
from tisdpo.modeling import (
    distributed_state,
    load_model,
    model_fingerprint_parts,
    unsharded_loading,
    weights_materialized,
)
from tisdpo.scoring import score_groups
from tisdpo.utils import atomic_path, digest

if TYPE_CHECKING:
    from tisdpo.config import ModelArguments, TisdpoConfig

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: soft-capped heads scored with their cap (the chunked path verifies itself)


def default_cache_dir() -> str:
    root = os.environ.get("TISDPO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tisdpo"
    )
    return os.path.join(root, "ref_logps")


def reference_fingerprint(model_parts: dict[str, Any], dataset: Any, logprob_path: str) -> str:
    return digest(
        {"model": model_parts, "path": logprob_path, "version": CACHE_VERSION},
        length=24,
        chunks=token_id_bytes(dataset),
    )


def token_id_bytes(dataset: Any) -> Iterator[bytes]:
    """Every pair's token ids, each sequence preceded by its length."""
    for column in ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids"):
        for ids in dataset[column]:
            yield len(ids).to_bytes(4, "little")
            yield torch.as_tensor(ids, dtype=torch.int64).numpy().tobytes()


def score_reference(
    model: torch.nn.Module,
    dataset: Any,
    pad_token_id: int,
    batch_size: int,
    device: torch.device,
    logprob_path: str = "chunked",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    reference_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    indices: list[int] | None = None,
    shared_prompt: bool = True,
) -> dict[int, tuple[list[float], list[float]]]:
    """Per-token reference log-probs of both completions for the rows ``indices`` of ``dataset``.

    ``batch_size`` counts responses; with ``shared_prompt`` a pair (its prompt once, both responses) is a row.
    """
    indices = list(range(len(dataset))) if indices is None else indices
    rows = dataset.select(indices)
    groups = [
        (prompt, [chosen, rejected])
        for prompt, chosen, rejected in zip(
            rows["prompt_input_ids"], rows["chosen_input_ids"], rows["rejected_input_ids"]
        )
    ]
    logps = score_groups(
        model,
        groups,
        pad_token_id,
        batch_size,
        device,
        logprob_path,
        chunk_size,
        reference_context,
        desc="reference log-probs",
        shared_prompt=shared_prompt,
    )
    return {index: (logps[k][0], logps[k][1]) for k, index in enumerate(indices)}


def save_cache(path: str, logps: list[tuple[list[float], list[float]]]) -> None:
    flat, offsets = [], [0]
    for chosen, rejected in logps:
        for side in (chosen, rejected):
            flat.extend(side)
            offsets.append(len(flat))
    with atomic_path(path) as tmp:
        save_file(
            {
                "logps": torch.tensor(flat, dtype=torch.float32),
                "offsets": torch.tensor(offsets, dtype=torch.int64),
            },
            tmp,
        )


def load_cache(path: str) -> list[tuple[list[float], list[float]]]:
    tensors = load_file(path)
    flat, offsets = tensors["logps"].tolist(), tensors["offsets"].tolist()
    sides = [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    return [(sides[i], sides[i + 1]) for i in range(0, len(sides), 2)]


def iter_shard(total: int, rank: int, world: int) -> Iterator[int]:
    return iter(range(rank, total, world))


def add_reference_logps(
    dataset: Any,
    model: torch.nn.Module,
    model_parts: dict[str, Any],
    pad_token_id: int,
    batch_size: int,
    logprob_path: str = "chunked",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    cache_dir: str | None = None,
    reference_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    shared_prompt: bool = True,
) -> Any:
    """Return ``dataset`` with ``ref_chosen_logps`` / ``ref_rejected_logps`` columns (cached).

    Under ``accelerate launch`` each process scores every world_size-th row and the results are
    gathered, so the work is done once across processes; the main process writes the cache file.
    The processes agree on whether the cache is usable (each must see the file; e.g. nodes without a
    shared cache folder all score again), so no process waits in a gather the others skip.
    """
    from accelerate.utils import gather_object

    state = distributed_state()
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(cache_dir, reference_fingerprint(model_parts, dataset, logprob_path) + ".safetensors")
    visible = os.path.exists(path)
    if state.num_processes > 1:
        visible = all(gather_object([visible]))
    if visible:
        logger.info("reusing cached reference log-probs %s", path)
        logps = load_cache(path)
    else:
        shard = list(iter_shard(len(dataset), state.process_index, state.num_processes))
        scored = score_reference(
            model,
            dataset,
            pad_token_id,
            batch_size,
            state.device,
            logprob_path,
            chunk_size,
            reference_context,
            shard,
            shared_prompt,
        )
        gathered = gather_object([scored]) if state.num_processes > 1 else [scored]
        merged: dict[int, tuple[list[float], list[float]]] = {}
        for part in gathered:
            merged.update(part)
        logps = [merged[i] for i in range(len(dataset))]
        if state.is_main_process:
            os.makedirs(cache_dir, exist_ok=True)
            save_cache(path, logps)
            logger.info("cached reference log-probs of %d pairs in %s", len(logps), path)
        state.wait_for_everyone()
    return dataset.add_column("ref_chosen_logps", [c for c, _ in logps]).add_column(
        "ref_rejected_logps", [r for _, r in logps]
    )


def with_reference_logps(
    datasets: list[Any],
    model: Any,
    model_name: str,
    tokenizer: Any,
    config: TisdpoConfig,
    reference_context: Any = None,
) -> list[Any]:
    """Attach precomputed reference log-probs (cached) to every dataset in the list (None stays None).

    ``model`` must hold its full weights on every process (see ``modeling.unsharded_loading``).
    """
    if not weights_materialized(model):
        raise UserError(
            f"{model_name}: its weights are sharded across processes (FSDP CPU-RAM-efficient loading or ZeRO-3) "
            "before training starts, so reference log-probs cannot be precomputed with it; "
            "load it within tisdpo.modeling.unsharded_loading()"
        )
    model.to(distributed_state().device)
    parts = model_fingerprint_parts(model_name, model)
    kwargs = {"reference_context": reference_context} if reference_context is not None else {}
    return [
        None
        if dataset is None
        else add_reference_logps(
            dataset,
            model,
            parts,
            tokenizer.pad_token_id,
            config.per_device_eval_batch_size,
            config.logprob_path,
            config.lm_head_chunk_size,
            config.ref_logps_cache_dir,
            shared_prompt=config.shared_prompt,
            **kwargs,
        )
        for dataset in datasets
    ]


def precompute_reference(
    model_args: ModelArguments,
    model_name: str,
    policy: Any,
    tokenizer: Any,
    config: TisdpoConfig,
    datasets: list[Any],
) -> list[Any]:
    """Attach reference log-probs to the datasets, holding no reference model afterwards.

    The reference is ``--ref_model_name_or_path`` if given, else the policy's starting weights: the
    policy itself (with PEFT, with its adapter disabled). When the policy's weights are sharded at
    load (FSDP CPU-RAM-efficient loading, ZeRO-3), a full copy is loaded for the scoring and freed.
    """
    ref_name = model_args.ref_model_name_or_path
    if ref_name or not weights_materialized(policy):
        with unsharded_loading():
            reference = load_model(model_args, ref_name or model_name)
        datasets = with_reference_logps(datasets, reference, ref_name or model_name, tokenizer, config)
        del reference
        gc.collect()
        return datasets
    context = policy.disable_adapter if model_args.use_peft else None
    return with_reference_logps(datasets, policy, model_name, tokenizer, config, context)
