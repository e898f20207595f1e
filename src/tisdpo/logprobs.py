"""Per-token log-probabilities of completion tokens, computing only what is needed.

``chunked`` path (default): the model runs with an identity in place of its LM head, so it returns
hidden states; only the hidden states that predict a completion token are kept, and the LM head is
applied to them in chunks of ``chunk_size`` tokens inside a custom autograd function that recomputes
each chunk's logits in backward. No (batch x length x vocabulary) tensor, and no full fp32
log-softmax, ever exists: peak extra memory is one ``chunk_size x vocabulary`` block.

``logits`` path: the model's own forward (``logits_to_keep`` trims the prompt-only tail), then a
gather of the label logit minus a logsumexp. Used when the full distribution is needed (TDPO's KL
terms) and for every model whose logits are not exactly ``hidden @ W^T``: the chunked path is taken
only for a model that passes :func:`chunked_head_is_exact` (a config check, then a probe run once
per model), so soft-capped or scaled logits are never silently computed without their cap.

:func:`batch_logps` takes a collated batch in either layout of ``data.collate``: for the shared-prompt layout
(each prompt once, before all its completions) it runs one forward with a custom 4D attention mask and restarted
position ids, for a model that passes :func:`shared_prompt_is_exact`; the result is the same ``CompletionLogps``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from tisdpo.data.collate import SHARED_LAYOUT_KEYS, shared_prompt_layout

logger = logging.getLogger(__name__)

# Tokens per LM-head block: measured fastest on CPU among 128/256/1024 (benchmarks/bench_scoring.py).
DEFAULT_CHUNK_SIZE = 128


class ChunkedLinearLogProb(torch.autograd.Function):
    """``logp[n] = (h W^T)[n, y_n] - logsumexp_v (h W^T)[n, v]`` in fp32, chunked over n.

    Also returns ``mean_logit[n] = mean_v (h W^T)[n, v]`` (no gradient), for TRL's ``logits/*`` metrics.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_size: int):
        count = hidden.shape[0]
        logps = torch.empty(count, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(count, dtype=torch.float32, device=hidden.device)
        mean_logits = torch.empty(count, dtype=torch.float32, device=hidden.device)
        for start in range(0, count, chunk_size):
            stop = min(start + chunk_size, count)
            logits = (hidden[start:stop] @ weight.t()).float()
            lse[start:stop] = torch.logsumexp(logits, dim=-1)
            logps[start:stop] = logits.gather(-1, labels[start:stop, None]).squeeze(-1) - lse[start:stop]
            mean_logits[start:stop] = logits.mean(-1)
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(mean_logits)
        return logps, mean_logits

    @staticmethod
    def backward(ctx, grad_logps: torch.Tensor, _grad_mean: torch.Tensor | None):
        hidden, weight, labels, lse = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        )
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            stop = min(start + ctx.chunk_size, hidden.shape[0])
            h = hidden[start:stop]
            probs = torch.exp((h @ weight.t()).float() - lse[start:stop, None])
            # d logp / d logits = onehot(y) - softmax
            grad_logits = -probs * grad_logps[start:stop, None]
            grad_logits.scatter_add_(-1, labels[start:stop, None], grad_logps[start:stop, None])
            grad_logits = grad_logits.to(h.dtype)
            if grad_hidden is not None:
                grad_hidden[start:stop] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += (grad_logits.t() @ h).float()
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def gather_label_logps(
    logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Label log-probs from logits (N, V) as ``logit[y] - logsumexp``, in fp32, chunk by chunk."""
    logps, means = [], []
    for start in range(0, logits.shape[0], chunk_size):
        block = logits[start : start + chunk_size].float()
        logps.append(
            block.gather(-1, labels[start : start + chunk_size, None]).squeeze(-1) - torch.logsumexp(block, -1)
        )
        means.append(block.detach().mean(-1))
    return torch.cat(logps), torch.cat(means)


@dataclass
class CompletionLogps:
    """Per-token values laid out (rows, max_completion_length), zero outside ``mask``."""

    logps: torch.Tensor
    mean_logits: torch.Tensor
    mask: torch.Tensor
    logits: torch.Tensor | None = None  # (N, V) at completion positions, only when asked for
    hidden: torch.Tensor | None = None  # (N, H) final hidden states predicting each token, when asked for


def completion_positions(completion_start: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) of the hidden state predicting each completion token, in mask order."""
    rows, cols = mask.nonzero(as_tuple=True)
    return rows, completion_start[rows] + cols - 1


def unwrap(model: nn.Module) -> nn.Module:
    """The innermost ``PreTrainedModel`` behind DDP / PEFT wrappers."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


# Config fields of models whose logits are post-processed after the LM head (soft-capping, scaling).
LOGIT_POSTPROCESSING_FIELDS = (
    "final_logit_softcapping",  # Gemma 2/3/4
    "logits_soft_cap",  # RecurrentGemma
    "logit_scale",  # Cohere
    "logits_scaling",  # Granite
    "output_multiplier",
    "lm_head_multiplier",
)
PROBE_TOKENS = 8
# Values the probe's stand-in LM head returns: wide enough that any soft cap below ~1e4 changes them.
PROBE_LOGIT_RANGE = 100.0


def configs_of(config: object, depth: int = 3) -> Iterator[object]:
    """A model config and the configs nested in it (``text_config``, ``decoder`` ...)."""
    yield config
    if depth == 0:
        return
    for value in vars(config).values() if hasattr(config, "__dict__") else ():
        if hasattr(value, "to_dict") and hasattr(value, "model_type"):  # a PretrainedConfig
            yield from configs_of(value, depth - 1)


def logit_postprocessing_field(config: object) -> str | None:
    """The first config field (top-level or nested) that says logits are post-processed after the head."""
    if config is None:
        return None
    for sub_config in configs_of(config):
        for name in LOGIT_POSTPROCESSING_FIELDS:
            if getattr(sub_config, name, None) not in (None, 1.0, 1):
                return name
    return None


def config_mismatch(model: nn.Module) -> str | None:
    """The cheap check: why the head is not a plain bias-free ``nn.Linear`` whose logits are used as they
    are (a config field that soft-caps or scales them), or None."""
    base = unwrap(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is None:
        return "it has no output embeddings"
    if type(head) is not nn.Linear:
        return f"its LM head is a {type(head).__name__}, not a plain Linear"
    if head.bias is not None:
        return "its LM head has a bias"
    field_name = logit_postprocessing_field(getattr(base, "config", None))
    return None if field_name is None else f"its config sets {field_name}"


@contextlib.contextmanager
def replaced_forward(module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[nn.Module]:
    """Run ``forward`` in place of ``module``'s forward for the duration of the block.

    A forward already set on the instance (accelerate's device hooks) is put back afterwards.
    """
    previous = module.__dict__.get("forward")
    module.forward = forward  # type: ignore[method-assign]
    try:
        yield module
    finally:
        if previous is None:
            del module.forward  # back to the class's forward
        else:
            module.forward = previous  # type: ignore[method-assign]


def head_as_identity(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Make the model return hidden states instead of logits for the duration of the block.

    The forward still goes through every wrapper (DDP, PEFT), so their hooks run as usual.
    """
    return replaced_forward(unwrap(model).get_output_embeddings(), lambda hidden_states: hidden_states)


def outer_model(model: nn.Module) -> nn.Module:
    """``model`` without its process wrappers (DDP, ``AdapterView``), still with PEFT's: what the probe runs.

    DDP is left out so that the probe's forward is no collective and touches no gradient bookkeeping.
    """
    while hasattr(model, "module"):
        model = model.module
    return model


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients in the block; every submodule's own training flag is restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


@torch.no_grad()
def probe_mismatch(model: nn.Module) -> str | None:
    """Why the chunked path would not reproduce this model's own logits, or None when it does.

    Three forwards on a few token ids, in eval mode without gradients: (1) with a stand-in LM head that
    returns known values, the model must return exactly those (soft-capping, scaling, a bias or slicing
    after the head all show up, whatever the weights); (2) the chunked computation, ``hidden @ W^T`` on
    the head's input, must match (3) the model's own logits within the dtype's tolerance.
    """
    target = outer_model(model)
    base = unwrap(model)
    head = base.get_output_embeddings()
    vocab, width = head.weight.shape
    embeddings = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    device = embeddings.weight.device if embeddings is not None else head.weight.device
    known_ids = min(vocab, embeddings.weight.shape[0]) if embeddings is not None else vocab
    input_ids = torch.linspace(0, known_ids - 1, PROBE_TOKENS, device=device).long()[None]
    probe_values = torch.linspace(-PROBE_LOGIT_RANGE, PROBE_LOGIT_RANGE, vocab, device=head.weight.device)
    returned: list[torch.Tensor] = []

    def stand_in_head(hidden_states: torch.Tensor) -> torch.Tensor:
        values = probe_values.to(hidden_states.dtype).expand(*hidden_states.shape[:-1], vocab).contiguous()
        returned.append(values.clone())  # kept apart, in case the model edits its logits in place
        return values

    def forward() -> torch.Tensor:
        return target(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits

    with evaluation_mode(target):
        logits = forward()
        with replaced_forward(head, stand_in_head):
            passed_through = forward()
        with head_as_identity(model):
            hidden = forward()
    if len(returned) != 1:
        return f"its forward calls its LM head {len(returned)} times"
    expected = returned[0].float().to(passed_through.device)
    if passed_through.shape != expected.shape or not torch.equal(passed_through.float(), expected):
        return "its logits are post-processed after the LM head (soft-capping or scaling)"
    if hidden.shape[-1] != width:
        return f"its LM head's input has width {hidden.shape[-1]}, not the head's {width}"
    chunked = (hidden.to(head.weight.dtype) @ head.weight.t()).float()
    logits = logits.float().to(chunked.device)
    tolerance = 1e-4 if head.weight.dtype == torch.float32 else 2e-2
    error = float((chunked - logits).abs().max())
    if not error <= tolerance * (1.0 + float(logits.abs().max())):
        return f"hidden @ W^T differs from its own logits by {error:.3g}"
    return None


# Verdict of chunked_head_is_exact per model (the unwrapped PreTrainedModel): (head it was made for, verdict).
_verdicts: weakref.WeakKeyDictionary[nn.Module, tuple[nn.Module | None, bool]] = weakref.WeakKeyDictionary()


def chunked_head_is_exact(model: nn.Module) -> bool:
    """Whether the chunked path computes exactly this model's log-probs; decided once per model and head.

    The config check first, then :func:`probe_mismatch`; a model that fails either is scored through its
    own logits (``--logprob_path logits``), said once in the log.
    """
    base = unwrap(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return cached_verdict(
        _verdicts,
        model,
        head,
        lambda: config_mismatch(model) or probe_mismatch(model),
        "its log-probs are computed from its own logits (--logprob_path logits)",
    )


def cached_verdict(
    verdicts: weakref.WeakKeyDictionary,
    model: nn.Module,
    made_for: object,
    mismatch: Callable[[], str | None],
    fallback: str,
) -> bool:
    """A check of ``model`` run once per model and ``made_for`` (its head, its attention implementation):
    ``mismatch()`` gives the reason it fails (None: it passes); a failure is said once in the log."""
    base = unwrap(model)
    cached = verdicts.get(base)
    if cached is not None and cached[0] == made_for:  # modules compare by identity
        return cached[1]
    reason = mismatch()
    if reason is not None:
        name = getattr(getattr(base, "config", None), "_name_or_path", "") or type(base).__name__
        logger.info("%s: %s; %s", name, reason, fallback)
    verdicts[base] = (made_for, reason is None)
    return reason is None


def laid_out(
    completion_mask: torch.Tensor,
    token_logps: torch.Tensor,
    mean_logits: torch.Tensor,
    logits: torch.Tensor | None,
    hidden: torch.Tensor | None,
) -> CompletionLogps:
    """Per-token values in mask order (N,) put into the ``(rows, max_completion_length)`` layout."""
    shape, device = completion_mask.shape, completion_mask.device
    logps = torch.zeros(shape, dtype=torch.float32, device=device).masked_scatter(completion_mask, token_logps)
    means = torch.zeros(shape, dtype=torch.float32, device=device).masked_scatter(completion_mask, mean_logits)
    return CompletionLogps(logps, means, completion_mask, logits, hidden)


def completion_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_start: torch.Tensor,
    completion_mask: torch.Tensor,
    path: str = "chunked",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    return_logits: bool = False,
    return_hidden: bool = False,
) -> CompletionLogps:
    """Log-probabilities of the completion tokens of a right-padded batch (see ``data.collate``).

    ``return_hidden`` also returns the final hidden state that predicts each completion token
    (what the LM head sees), e.g. for a learned token-mask head.
    """
    rows, positions = completion_positions(completion_start, completion_mask)
    labels = input_ids[rows, positions + 1]
    # The last position any row needs; the rest is padding the model need not see.
    used = int((completion_start + completion_mask.sum(-1)).max())
    inputs = {"input_ids": input_ids[:, :used], "attention_mask": attention_mask[:, :used]}
    first = int(completion_start.min()) - 1
    return forward_logps(
        model, inputs, rows, positions, labels, completion_mask, path, chunk_size, return_logits, return_hidden, first
    )


def forward_logps(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    rows: torch.Tensor,
    positions: torch.Tensor,
    labels: torch.Tensor,
    completion_mask: torch.Tensor,
    path: str,
    chunk_size: int,
    return_logits: bool,
    return_hidden: bool,
    first: int | None = None,
) -> CompletionLogps:
    """One forward on ``inputs``; the token at mask order n is ``labels[n]``, predicted at ``(rows, positions)[n]``.

    The logits path keeps only the logits it needs: from column ``first`` on (``logits_to_keep`` as a count),
    or, when ``first`` is None, the columns that appear in ``positions`` (``logits_to_keep`` as indices).
    """
    hidden_at_completion = None
    logits = None
    if path == "chunked" and not return_logits and chunked_head_is_exact(model):
        with head_as_identity(model) as head:
            hidden = model(**inputs, use_cache=False).logits
        hidden_at_completion = hidden[rows, positions]
        # Under mixed precision the model's outputs come back in fp32 while a bf16 model's head stays bf16:
        # the head runs in its weight's dtype, as it would inside the model.
        token_logps, mean_logits = ChunkedLinearLogProb.apply(
            hidden_at_completion.to(head.weight.dtype), head.weight, labels, chunk_size
        )
    else:
        if first is not None:
            keep: int | torch.Tensor = inputs["input_ids"].shape[1] - first
            kept_positions = positions - first
        else:
            keep, kept_positions = torch.unique(positions, return_inverse=True)
        captured: list[torch.Tensor] = []
        head = unwrap(model).get_output_embeddings()
        hook = head.register_forward_pre_hook(lambda _, args: captured.append(args[0])) if return_hidden else None
        try:
            outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
        finally:
            if hook is not None:
                hook.remove()
        logits = outputs.logits[rows, kept_positions]
        if return_hidden:
            hidden_at_completion = captured[0][rows, kept_positions]
        token_logps, mean_logits = gather_label_logps(logits, labels, chunk_size)
    return laid_out(
        completion_mask,
        token_logps,
        mean_logits,
        logits if return_logits else None,
        hidden_at_completion if return_hidden else None,
    )


# -- the shared-prompt layout ------------------------------------------------------------------
# Each prompt is computed once for all its completions (Wang & Hegde 2024, "Accelerating Direct Preference
# Optimization with Prefix Sharing"): see ``data.collate`` for the layout. The model gets a custom 4D mask and
# restarted position ids, which only some models and attention implementations honour: the shared forward is
# used for a model that passes :func:`shared_prompt_is_exact` (a config check, then a probe run once per model);
# for any other, a shared-prompt batch is rewritten on the device into the unshared layout (:func:`unshared`).

# Attention implementations that take a custom 4D mask as it is (flash attention takes none; flex a BlockMask).
SHARED_PROMPT_ATTENTION = ("sdpa", "eager")


def is_shared_layout(batch: Mapping[str, torch.Tensor]) -> bool:
    return "completion_offset" in batch


def shared_positions(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices (into ``input_ids.flatten()``), in mask order, of each completion token and of the hidden state
    that predicts it: the previous token of its completion, or, for the first, the last token of its prompt."""
    completion, column = batch["completion_mask"].nonzero(as_tuple=True)
    token = batch["completion_offset"][completion] + column
    prompt_last = batch["prompt_offset"][completion] + batch["prompt_length"][completion] - 1
    return torch.where(column == 0, prompt_last, token - 1), token


def shared_attention_mask(group_ids: torch.Tensor, side_ids: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """(R, 1, W, W) mask: a token sees the earlier tokens of its group that are prompt tokens or of its own side.

    Boolean (True = attend) when ``dtype`` is None, else additive in ``dtype`` (0 or its most negative value), as
    eager attention adds it to the scores. Every query sees at least itself (padding sees earlier padding), so no
    softmax row is empty: no NaN, in values or gradients.
    """
    width = group_ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=group_ids.device).tril()
    same_group = group_ids[:, :, None] == group_ids[:, None, :]
    visible_side = (side_ids[:, None, :] == 0) | (side_ids[:, :, None] == side_ids[:, None, :])
    allowed = (causal & same_group & visible_side)[:, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def attention_implementation(model: nn.Module) -> str | None:
    return getattr(getattr(unwrap(model), "config", None), "_attn_implementation", None)


def shared_model_inputs(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``input_ids``, ``position_ids`` and the 4D mask, in the form the model's attention takes."""
    base = unwrap(model)
    embeddings = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    dtype = embeddings.weight.dtype if embeddings is not None else torch.float32
    mask_dtype = None if attention_implementation(model) == "sdpa" else dtype
    return {
        "input_ids": batch["input_ids"],
        "position_ids": batch["position_ids"],
        "attention_mask": shared_attention_mask(batch["group_ids"], batch["side_ids"], mask_dtype),
    }


def shared_completion_logps(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    path: str = "chunked",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    return_logits: bool = False,
    return_hidden: bool = False,
) -> CompletionLogps:
    """:func:`completion_logps` of a shared-prompt batch, in one forward of every row (no capability check)."""
    predictors, tokens = shared_positions(batch)
    labels = batch["input_ids"].flatten()[tokens]
    width = batch["input_ids"].shape[1]
    rows, positions = predictors // width, predictors % width
    return forward_logps(
        model,
        shared_model_inputs(model, batch),
        rows,
        positions,
        labels,
        batch["completion_mask"],
        path,
        chunk_size,
        return_logits,
        return_hidden,
    )


def unshared(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A shared-prompt batch rewritten, on its device, into the unshared layout (``prompt + completion`` a row)."""
    completion_mask = batch["completion_mask"]
    prompt_length, completion_length = batch["prompt_length"], completion_mask.sum(-1)
    total = prompt_length + completion_length
    column = torch.arange(int(total.max()), device=total.device)[None, :]
    in_prompt = column < prompt_length[:, None]
    source = torch.where(
        in_prompt,
        batch["prompt_offset"][:, None] + column,
        batch["completion_offset"][:, None] + column - prompt_length[:, None],
    )
    valid = column < total[:, None]
    flat_ids = batch["input_ids"].flatten()
    rewritten = {key: value for key, value in batch.items() if key not in SHARED_LAYOUT_KEYS}
    rewritten["input_ids"] = flat_ids[torch.where(valid, source, 0)]  # padding repeats token 0: it is masked
    rewritten["attention_mask"] = valid.long()
    rewritten["completion_start"] = prompt_length
    return rewritten


# Model types whose every layer is full causal attention that takes a custom 4D mask as it is and places each
# token by its position id (not by its column): the families tests/test_model_families.py verifies exact, with the
# support table in docs/models.md. Any other model type keeps the plain layout, whatever the probe says: the probe's
# short rows cannot tell a recurrent state or a long window from full attention.
SHARED_PROMPT_MODEL_TYPES = frozenset(
    {
        "falcon",
        "gemma",
        "gpt2",
        "gpt_bigcode",
        "gpt_neox",
        "gptj",
        "granite",
        "llama",
        "mistral",
        "olmo2",
        "opt",
        "phi",
        "phi3",
        "qwen2",
        "qwen3",
        "smollm3",
        "stablelm",
        "starcoder2",
    }
)
# Config names of windowed, chunked or local attention, in any spelling seen so far (sliding_window, window_size,
# attention_window_size, attention_chunk_size, local_attention ...): a field whose name holds one of these words
# and whose value is set refuses the shared layout, unless it is in NOT_AN_ATTENTION_SPAN.
ATTENTION_SPAN_WORDS = ("window", "chunk", "local")
NOT_AN_ATTENTION_SPAN = frozenset(
    {
        "chunk_size_feed_forward",  # the feed-forward computed in chunks: the same values
        "max_window_layers",  # how many layers a sliding window would skip; the window itself is sliding_window
        "num_local_experts",  # mixture-of-experts size
    }
)
# Config names of a recurrent, state-space or convolution layer (Mamba, Jamba, Falcon-H1, LFM2, RecurrentGemma ...):
# a token's state carries every earlier column, so the rejected response would see the chosen one.
RECURRENT_WORDS = ("mamba", "ssm", "state_size", "lru_", "conv")
# Config names of position biases by column distance (ALiBi): the rejected response would be placed after the chosen.
COLUMN_DISTANCE_WORDS = ("alibi",)
# Layer kinds that are full causal attention, as configs name them in layer_types, attention_types ...
FULL_ATTENTION_KINDS = frozenset({"full_attention", "attention", "global"})


def set_field(config: object, words: tuple[str, ...], ignored: frozenset[str] = frozenset()) -> str | None:
    """``name=value`` of the first field of ``config`` whose name holds one of ``words`` and whose value is set."""
    fields = vars(config) if hasattr(config, "__dict__") else {}
    for name, value in fields.items():
        if name in ignored or not any(word in name.lower() for word in words):
            continue
        if name == "sliding_window" and fields.get("use_sliding_window") is False:
            continue  # Qwen2/Qwen3: a window size that use_sliding_window leaves unused
        if value not in (None, False, 0, "", [], ()):
            return f"{name}={value!r}"
    return None


def layer_kinds(value: object) -> list[str]:
    """The strings in a (nested) list or tuple: ``[[["global", "local"], 12]]`` gives ``["global", "local"]``."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [kind for item in value for kind in layer_kinds(item)]
    return []


def non_attention_layer_kinds(config: object) -> list[str]:
    """Layer kinds other than full attention that ``config`` lists (``layer_types``, ``attention_types``,
    ``attention_layers``, ``block_types``, ``layers_block_type`` ...)."""
    kinds: set[str] = set()
    for name, value in (vars(config) if hasattr(config, "__dict__") else {}).items():
        if any(word in name.lower() for word in ("type", "layers", "pattern")) and isinstance(value, (list, tuple)):
            kinds.update(layer_kinds(value))
    return sorted(kinds - FULL_ATTENTION_KINDS)


def shared_prompt_config_mismatch(model: nn.Module) -> str | None:
    """The allow-list: why the shared layout is not known to be exact for this model, or None.

    A model passes only when (1) its attention implementation takes a custom 4D mask, (2) its forward takes
    position ids, (3) no config, nested ones included, sets a recurrent, state-space or convolution layer, an ALiBi
    bias, or a windowed, chunked or local attention in any spelling, or lists a layer kind other than full
    attention, and (4) its model type is one whose layers are all full causal attention placed by position ids
    (:data:`SHARED_PROMPT_MODEL_TYPES`, each verified by the model-family matrix test). Anything else, unrecognised
    included, keeps the plain layout.

    Windows are decided here, from the config alone, not by the probe: the probe's rows are a few tokens long while
    a real window is thousands, and a window the rows do not reach changes nothing the probe can see (GPT-Neo's
    local layers mask by column distance, so a rejected token farther than the window from the prompt loses it).
    A probe long enough to reach such a window would cost a forward of thousands of tokens per model.
    """
    base = unwrap(model)
    implementation = attention_implementation(model)
    if implementation not in SHARED_PROMPT_ATTENTION:
        return f"its attention implementation {implementation!r} takes no custom 4D mask"
    try:
        parameters = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        parameters = {}
    if "position_ids" not in parameters:
        return "its forward takes no position_ids"
    config = getattr(base, "config", None)
    for sub_config in configs_of(config):
        recurrent = set_field(sub_config, RECURRENT_WORDS)
        if recurrent is not None:
            return f"its config sets {recurrent} (a recurrent, state-space or convolution layer)"
        column_bias = set_field(sub_config, COLUMN_DISTANCE_WORDS)
        if column_bias is not None:
            return f"its config sets {column_bias} (a position bias by column distance)"
        span = set_field(sub_config, ATTENTION_SPAN_WORDS, NOT_AN_ATTENTION_SPAN)
        if span is not None:
            return f"its config sets {span} (windowed, chunked or local attention)"
        kinds = non_attention_layer_kinds(sub_config)
        if kinds:
            return f"its layers are not all full attention ({', '.join(kinds)})"
    model_type = getattr(config, "model_type", None)
    if model_type not in SHARED_PROMPT_MODEL_TYPES:
        return f"its model type {model_type!r} is not one the shared layout is verified exact for (docs/models.md)"
    return None


def probe_groups(vocab: int) -> list[tuple[list[int], list[list[int]]]]:
    """Three groups of distinct token ids spread over the vocabulary: two fill a packed row, one has padding."""
    ids = torch.linspace(0, vocab - 1, 24).long().tolist()
    return [
        (ids[0:4], [ids[4:7], ids[7:9]]),
        (ids[9:11], [ids[11:13], ids[13:16]]),
        (ids[16:19], [ids[19:21], ids[21:22]]),
    ]


@torch.no_grad()
def probe_shared_prompt_mismatch(model: nn.Module) -> str | None:
    """Why the shared-prompt forward would not reproduce this model's log-probs, or None when it does.

    In eval mode without gradients: three groups in the shared layout (two packed in one row, one beside
    padding), scored through the model's own logits, against the same completions one per row.
    """
    target = outer_model(model)
    base = unwrap(model)
    embeddings = base.get_input_embeddings()
    vocab = min(embeddings.weight.shape[0], base.get_output_embeddings().weight.shape[0])
    groups = probe_groups(vocab)
    shared = shared_prompt_layout(groups, pad_token_id=0, pack_tokens=11)
    shared = {key: value.to(embeddings.weight.device) for key, value in shared.items()}
    with evaluation_mode(target):
        try:
            together = shared_completion_logps(target, shared, path="logits").logps
        except Exception as error:  # noqa: BLE001 - any failure means: do not share
            return f"its forward fails with a 4D mask and position ids ({type(error).__name__}: {error})"
        alone = batch_logps(target, unshared(shared), path="logits").logps
    error = float((together - alone).abs().max())
    tolerance = 1e-4 if embeddings.weight.dtype == torch.float32 else 5e-2
    if not error <= tolerance * (1.0 + float(alone.abs().max())):
        return f"its log-probs with a shared prompt differ by {error:.3g}"
    return None


# Verdict of shared_prompt_is_exact per model (the unwrapped PreTrainedModel): (attention implementation, verdict).
_shared_verdicts: weakref.WeakKeyDictionary[nn.Module, tuple[str | None, bool]] = weakref.WeakKeyDictionary()


def shared_prompt_is_exact(model: nn.Module) -> bool:
    """Whether a shared-prompt forward computes exactly this model's log-probs; decided once per model.

    The config check (an allow-list, :func:`shared_prompt_config_mismatch`) first, then
    :func:`probe_shared_prompt_mismatch` (the 4D mask and position ids honoured); for a model that fails either,
    shared-prompt batches are unshared on the device (one prompt + completion a row), said once in the log.
    """
    return cached_verdict(
        _shared_verdicts,
        model,
        attention_implementation(model),
        lambda: shared_prompt_config_mismatch(model) or probe_shared_prompt_mismatch(model),
        "each prompt is computed once per completion (no prompt sharing)",
    )


def batch_logps(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    path: str = "chunked",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    return_logits: bool = False,
    return_hidden: bool = False,
) -> CompletionLogps:
    """Per-token log-probs of a collated batch in either layout (``data.collate``); the same result for both.

    A shared-prompt batch is computed in one shared forward when the model passes :func:`shared_prompt_is_exact`,
    else unshared first. ``return_logits`` gives (N, V) logits and ``return_hidden`` (N, H) final hidden states,
    N the completion tokens in mask order (row by row of ``completion_mask``), in both layouts.
    """
    options = {"path": path, "chunk_size": chunk_size, "return_logits": return_logits, "return_hidden": return_hidden}
    if is_shared_layout(batch):
        if shared_prompt_is_exact(model):
            return shared_completion_logps(model, batch, **options)
        batch = unshared(batch)
    return completion_logps(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        batch["completion_start"],
        batch["completion_mask"],
        **options,
    )
