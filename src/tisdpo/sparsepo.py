"""SparsePO token masks (Christopoulou et al. 2024): which tokens count, as masks m_t in [0, 1].

Two ways to get them, both giving exact zeros (so the sparsity is real, not a rounding):

* ``reference``: derived from the reference model's probabilities, ``m_t = p_ref(y_t)`` where
  ``p_ref(y_t) >= threshold`` and 0 below it. Tokens the reference finds very unlikely are the noisy
  ones for a log-ratio; no extra parameters, and the precomputed reference log-probs suffice.
* ``learned``: a small head on the policy's final hidden states, ``m_t = min(relu(w . h_t + b), 1)``,
  trained jointly with the policy. It starts at w = 0, b = 1 (every mask 1, i.e. DPO) and the
  ReLU lets it switch tokens off exactly. Its parameters live on the model as ``sparsepo_mask_head``,
  so the optimizer, checkpoints and resume treat them like any other weight.

The masks weight the per-token rewards (and the KL terms when ``sparsepo_kl_coef`` > 0) in
:func:`tisdpo.losses.sparsepo_loss`; ``sparsity/*`` metrics report the share of masks that are 0.
"""

from __future__ import annotations

import torch
from torch import nn

MASK_MODES = ("reference", "learned")
HEAD_ATTRIBUTE = "sparsepo_mask_head"


def reference_masks(ref_logps: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """``p_ref(y_t)`` where it is at least ``threshold``, else 0 (and 0 outside ``mask``)."""
    probs = ref_logps.exp()
    return torch.where((probs >= threshold) & mask, probs, torch.zeros_like(probs))


class MaskHead(nn.Module):
    """``m = min(relu(w . h + b), 1)``, initialised to m = 1 everywhere."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.ones_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(hidden.to(self.proj.weight.dtype))).clamp(max=1.0).squeeze(-1).float()


def attach_mask_head(model: nn.Module) -> MaskHead:
    """Add (or return the existing) mask head to ``model`` so it trains and saves with it.

    A model saved after SparsePO training holds its head's weights beside its own, which
    ``from_pretrained`` passes over as unexpected keys: they are read back from the model's folder,
    so evaluating or continuing from it uses the learned masks, not fresh ones (all 1, i.e. DPO).
    """
    head = getattr(model, HEAD_ATTRIBUTE, None)
    if head is None:
        head = MaskHead(model.config.hidden_size).to(next(model.parameters()).device)
        saved = saved_head_state(getattr(model, "name_or_path", None) or "")
        if saved:
            head.load_state_dict(saved)
        setattr(model, HEAD_ATTRIBUTE, head)
    return head


def saved_head_state(folder: str) -> dict[str, torch.Tensor] | None:
    """The mask head's weights in a local ``save_pretrained`` folder (None when it has none)."""
    import json
    import os

    from safetensors import safe_open

    if not os.path.isdir(folder):
        return None
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as handle:
            files = sorted(set(json.load(handle)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    prefix = HEAD_ATTRIBUTE + "."
    state: dict[str, torch.Tensor] = {}
    for name in files:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key.startswith(prefix):
                    state[key[len(prefix) :]] = handle.get_tensor(key)
    return state or None


def learned_masks(head: MaskHead, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masks laid out like ``mask`` from hidden states (N, H) given in ``mask`` order."""
    values = head(hidden)
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)


def sparsity(masks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row: the share of completion tokens whose mask is exactly 0."""
    return ((masks == 0) & mask).sum(-1).float() / mask.sum(-1).clamp(min=1)
