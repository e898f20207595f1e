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
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

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
    cached = _verdicts.get(base)
    if cached is not None and cached[0] is head:
        return cached[1]
    reason = config_mismatch(model) or probe_mismatch(model)
    if reason is not None:
        name = getattr(getattr(base, "config", None), "_name_or_path", "") or type(base).__name__
        logger.info("%s: %s; its log-probs are computed from its own logits (--logprob_path logits)", name, reason)
    _verdicts[base] = (head, reason is None)
    return reason is None


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
    input_ids, attention_mask = input_ids[:, :used], attention_mask[:, :used]
    hidden_at_completion = None
    if path == "chunked" and not return_logits and chunked_head_is_exact(model):
        with head_as_identity(model) as head:
            hidden = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        hidden_at_completion = hidden[rows, positions]
        # Under mixed precision the model's outputs come back in fp32 while a bf16 model's head stays bf16:
        # the head runs in its weight's dtype, as it would inside the model.
        token_logps, mean_logits = ChunkedLinearLogProb.apply(
            hidden_at_completion.to(head.weight.dtype), head.weight, labels, chunk_size
        )
        logits = None
    else:
        first = int(completion_start.min()) - 1
        captured: list[torch.Tensor] = []
        head = unwrap(model).get_output_embeddings()
        hook = head.register_forward_pre_hook(lambda _, args: captured.append(args[0])) if return_hidden else None
        try:
            outputs = model(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=used - first
            )
        finally:
            if hook is not None:
                hook.remove()
        logits = outputs.logits[rows, positions - first]
        if return_hidden:
            hidden_at_completion = captured[0][rows, positions - first]
        token_logps, mean_logits = gather_label_logps(logits, labels, chunk_size)
    shape = completion_mask.shape
    logps = torch.zeros(shape, dtype=torch.float32, device=input_ids.device).masked_scatter(
        completion_mask, token_logps
    )
    means = torch.zeros(shape, dtype=torch.float32, device=input_ids.device).masked_scatter(
        completion_mask, mean_logits
    )
    return CompletionLogps(
        logps,
        means,
        completion_mask,
        logits if return_logits else None,
        hidden_at_completion if return_hidden else None,
    )
