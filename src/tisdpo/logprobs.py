"""Per-token log-probabilities of completion tokens, computing only what is needed.

``chunked`` path (default): the model runs with an identity in place of its LM head, so it returns
hidden states; only the hidden states that predict a completion token are kept, and the LM head is
applied to them in chunks of ``chunk_size`` tokens inside a custom autograd function that recomputes
each chunk's logits in backward. No (batch x length x vocabulary) tensor, and no full fp32
log-softmax, ever exists: peak extra memory is one ``chunk_size x vocabulary`` block.

``logits`` path: the model's own forward (``logits_to_keep`` trims the prompt-only tail), then a
gather of the label logit minus a logsumexp. Used for models whose head is not a plain linear layer
(logit soft-capping or scaling) and when the full distribution is needed (TDPO's KL terms).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

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


def head_is_plain_linear(model: nn.Module) -> bool:
    base = unwrap(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    config = getattr(base, "config", None)
    special = any(
        getattr(config, name, None) not in (None, 1.0)
        for name in ("final_logit_softcapping", "logit_scale", "logits_scaling")
    )
    return isinstance(head, nn.Linear) and head.bias is None and not special


@contextlib.contextmanager
def head_as_identity(model: nn.Module) -> Iterator[nn.Linear]:
    """Make the model return hidden states instead of logits for the duration of the block.

    The forward still goes through every wrapper (DDP, PEFT), so their hooks run as usual.
    """
    head = unwrap(model).get_output_embeddings()
    head.forward = lambda hidden_states: hidden_states  # type: ignore[method-assign]
    try:
        yield head
    finally:
        del head.forward  # restores the class's forward


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
    if path == "chunked" and not return_logits and head_is_plain_linear(model):
        with head_as_identity(model) as head:
            hidden = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        hidden_at_completion = hidden[rows, positions]
        token_logps, mean_logits = ChunkedLinearLogProb.apply(hidden_at_completion, head.weight, labels, chunk_size)
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
