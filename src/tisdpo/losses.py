"""Preference objectives as pure functions on tensors.

Notation (docs/method.md, "Notation"): for a response y, ``d_t = log pi_theta(y_t | x, y_<t) - log
pi_ref(y_t | x, y_<t)`` is the per-token log-ratio; a sequence log-ratio is ``sum_t d_t`` over the
completion tokens. Every pair loss returns a :class:`PairLoss`: one loss per pair (shape ``(B,)``; the
trainer averages them) and the implicit rewards of the chosen and rejected responses under that
objective (detached), as the original DPO code's and torchtune's losses do.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class PairLoss(NamedTuple):
    """Per-pair losses ``(B,)`` and the objective's implicit rewards of both responses ``(B,)``, detached."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def _rewards(beta: float, chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return beta * chosen.detach(), beta * rejected.detach()


def masked_sum(values: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_t w_t * v_t`` over the positions where ``mask`` is true (w = 1 when not given).

    DPO and TIS-DPO both go through here, so TIS-DPO with unit weights is DPO bit for bit.
    """
    if weights is not None:
        values = values * weights
    return (values * mask).sum(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked positions of each row."""
    return masked_sum(values, mask) / mask.sum(-1).clamp(min=1)


def dpo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> PairLoss:
    """DPO (sigmoid) loss, with cDPO's label smoothing eps (0 = plain DPO).

    ``u = (sum_t d_t(y_w)) - (sum_t d_t(y_l))``
    ``loss = -(1 - eps) * log sigmoid(beta * u) - eps * log sigmoid(-beta * u)``
    rewards: ``beta * sum_t d_t(y)``
    """
    logits = beta * (chosen_logratios - rejected_logratios)
    loss = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PairLoss(loss, *_rewards(beta, chosen_logratios, rejected_logratios))


def ipo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> PairLoss:
    """IPO loss ``(u - 1 / (2 beta))^2`` with u the difference of log-ratios.

    Given the completion lengths, u is the difference of length-averaged log-ratios
    (``mean_t d_t`` instead of ``sum_t d_t``), as in TRL. rewards: ``beta * sum_t d_t(y)``, as TRL logs them.
    """
    chosen, rejected = chosen_logratios, rejected_logratios
    if chosen_lengths is not None and rejected_lengths is not None:
        chosen, rejected = chosen / chosen_lengths.clamp(min=1), rejected / rejected_lengths.clamp(min=1)
    loss = (chosen - rejected - 1.0 / (2.0 * beta)) ** 2
    return PairLoss(loss, *_rewards(beta, chosen_logratios, rejected_logratios))


def tdpo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    chosen_seq_kl: torch.Tensor,
    rejected_seq_kl: torch.Tensor,
    beta: float,
    alpha: float = 0.5,
    variant: int = 2,
) -> PairLoss:
    """Token-level DPO (Zeng et al. 2024) with sequential KL ``SeqKL(y) = sum_t KL(pi_ref || pi_theta)_t``.

    TDPO1: ``z = u - (SeqKL(y_l) - SeqKL(y_w))``
    TDPO2: ``z = u - alpha * (SeqKL(y_l) - stopgrad(SeqKL(y_w)))``
    ``loss = -log sigmoid(beta * z)``, u the difference of summed log-ratios; rewards ``beta * sum_t d_t(y)``.
    """
    if variant == 1:
        delta = rejected_seq_kl - chosen_seq_kl
    else:
        delta = alpha * (rejected_seq_kl - chosen_seq_kl.detach())
    loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios - delta))
    return PairLoss(loss, *_rewards(beta, chosen_logratios, rejected_logratios))


def simpo_loss(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    beta: float,
    gamma_beta_ratio: float = 0.5,
) -> PairLoss:
    """SimPO (reference-free, length-normalized, with a target margin gamma = ratio * beta).

    ``loss = -log sigmoid(beta * (mean_t log pi(y_w) - mean_t log pi(y_l)) - gamma)``
    rewards: ``beta * mean_t log pi(y_t)``
    """
    loss = -F.logsigmoid(beta * (chosen_avg_logps - rejected_avg_logps) - gamma_beta_ratio * beta)
    return PairLoss(loss, *_rewards(beta, chosen_avg_logps, rejected_avg_logps))


def tisdpo_loss(
    chosen_token_logratios: torch.Tensor,
    rejected_token_logratios: torch.Tensor,
    chosen_weights: torch.Tensor,
    rejected_weights: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    beta: float,
    kl_coef: float = 0.0,
    chosen_token_kl: torch.Tensor | None = None,
    rejected_token_kl: torch.Tensor | None = None,
) -> PairLoss:
    """TIS-DPO: DPO on importance-weighted per-token log-ratios (docs/method.md, "TIS-DPO").

    ``u = sum_t w^w_t d_t(y_w) - sum_t w^l_t d_t(y_l)``
    ``eta = kl_coef * beta * (SeqKL_w(y_l) - stopgrad(SeqKL_w(y_w)))`` with
    ``SeqKL_w(y) = sum_t w_t * KL(pi_ref(.|x,y_<t) || pi_theta(.|x,y_<t))`` (TDPO2's convention)
    ``loss = -log sigmoid(beta * u - eta)``; rewards: the weighted ``beta * sum_t w_t d_t(y)``.

    With all weights 1 and ``kl_coef = 0`` this is exactly :func:`dpo_loss`. The KL term is off by
    default (the paper's ablation finds it matters little); with it on, minimizing the loss pushes
    the weighted KL of the rejected response down.
    """
    chosen = masked_sum(chosen_token_logratios, chosen_mask, chosen_weights)
    rejected = masked_sum(rejected_token_logratios, rejected_mask, rejected_weights)
    if not kl_coef:
        return dpo_loss(chosen, rejected, beta)
    if chosen_token_kl is None or rejected_token_kl is None:
        raise ValueError("tisdpo_loss with kl_coef != 0 needs the per-token KL of both responses")
    rejected_kl = masked_sum(rejected_token_kl, rejected_mask, rejected_weights)
    chosen_kl = masked_sum(chosen_token_kl, chosen_mask, chosen_weights).detach()
    loss = -F.logsigmoid(beta * (chosen - rejected) - kl_coef * beta * (rejected_kl - chosen_kl))
    return PairLoss(loss, *_rewards(beta, chosen, rejected))


def sft_loss(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per completion token, averaged over the tokens of the batch.

    ``loss = -(sum_{i,t} log pi(y_{i,t})) / (number of completion tokens)`` (a scalar).
    """
    return -(token_logps * mask).sum() / mask.sum().clamp(min=1)


def token_kl(policy_logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """``KL(pi_ref || pi_theta)`` at each position, from logits (N, V) -> (N,), in fp32."""
    ref_logp = F.log_softmax(ref_logits.float(), -1)
    policy_logp = F.log_softmax(policy_logits.float(), -1)
    return (ref_logp.exp() * (ref_logp - policy_logp)).sum(-1)


def dlma_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    scores: torch.Tensor,
    beta: float,
    gamma: float = 0.2,
    clamp: float = 40.0,
) -> PairLoss:
    """DLMA: DPO with the self-rewarding score R as a margin (docs/method.md, "DLMA").

    ``loss = -log sigmoid(beta * (u - gamma * clamp(R, -c, c)))``, u the difference of summed log-ratios;
    rewards ``beta * sum_t d_t(y)``.
    """
    loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios - gamma * scores.clamp(-clamp, clamp)))
    return PairLoss(loss, *_rewards(beta, chosen_logratios, rejected_logratios))


def sparsepo_loss(
    chosen_token_logratios: torch.Tensor,
    rejected_token_logratios: torch.Tensor,
    chosen_masks: torch.Tensor,
    rejected_masks: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    beta: float,
    kl_coef: float = 0.0,
    chosen_token_kl: torch.Tensor | None = None,
    rejected_token_kl: torch.Tensor | None = None,
) -> PairLoss:
    """SparsePO: token masks m_t in [0, 1] weight the per-token rewards and KL terms.

    ``u = sum_t m^w_t d_t(y_w) - sum_t m^l_t d_t(y_l)``
    ``delta = kl_coef * (sum_t m^l_t KL_t(y_l) - stopgrad(sum_t m^w_t KL_t(y_w)))``
    ``loss = -log sigmoid(beta * (u - delta))``; rewards: the masked ``beta * sum_t m_t d_t(y)``.

    The same form as :func:`tisdpo_loss`, with masks (sparse, possibly learned) in place of weights.
    """
    return tisdpo_loss(
        chosen_token_logratios,
        rejected_token_logratios,
        chosen_masks,
        rejected_masks,
        chosen_mask,
        rejected_mask,
        beta,
        kl_coef=kl_coef,
        chosen_token_kl=chosen_token_kl,
        rejected_token_kl=rejected_token_kl,
    )
