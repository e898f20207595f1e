"""Stage kinds beyond the generic ones: the registry that the demo (and any user) extends.

The generic pipeline (:mod:`tisdpo.pipeline.recipe`) knows data files, model names and the weights of
P, S, D and random. A recipe may name three other kinds of stage, each looked up here by its name:

* ``data: {<kind>: spec}``: a stage that makes the data. ``add(builder, spec)`` adds it and returns the
  refs of the files it writes (``train``, and any of ``eval``, ``prompts``, ``sft``).
* ``base_model: {<kind>: spec}``: a stage that makes the base model. ``add(builder, spec)`` returns its ref.
* ``objectives.<name>.weights: <kind>``: a stage that makes a weights file from the recipe's other
  weights. ``add(builder, kind, weights, weight_flags)`` returns its ref (``weights``: the refs of the
  weights files so far, by source).

A kind registers itself with :func:`register_stage_kind` when its module is imported (``import
tisdpo.demo`` registers the demo's ``demo_task``, ``demo_factory``, ``oracle`` and ``oracle_sign``); a
recipe loads such modules by name with ``extensions: [module, ...]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from tisdpo.errors import UserError

Slot = Literal["data", "base_model", "weights"]
SLOTS: tuple[Slot, ...] = ("data", "base_model", "weights")


@dataclass(frozen=True)
class StageKind:
    slot: Slot  # where a recipe names the kind
    name: str  # the name it uses there
    add: Callable[..., Any]  # adds the kind's stage to a StageBuilder and returns its ref(s); see above
    # Why a recipe cannot use the kind (a phrase after "it needs ..."), or None when it can; called with the recipe.
    unmet_needs: Callable[[Any], str | None] | None = None
    # data kinds whose pairs carry true token rewards: how well a weights file's rewards separate good from
    # bad tokens (a table in the pipeline's report), or None when the rows cannot say.
    weight_metric: Callable[[list[dict[str, Any]]], dict[str, float] | None] | None = None


STAGE_KINDS: dict[tuple[Slot, str], StageKind] = {}


def register_stage_kind(kind: StageKind) -> StageKind:
    """Make ``kind`` available to every recipe built in this process (registering it again replaces it)."""
    if kind.slot not in SLOTS:
        raise ValueError(f"unknown slot '{kind.slot}' for stage kind '{kind.name}' (expected one of {SLOTS})")
    STAGE_KINDS[(kind.slot, kind.name)] = kind
    return kind


def known_kinds(slot: Slot) -> list[str]:
    return sorted(name for (kind_slot, name) in STAGE_KINDS if kind_slot == slot)


def is_stage_kind(slot: Slot, name: object) -> bool:
    return isinstance(name, str) and (slot, name) in STAGE_KINDS


def stage_kind(slot: Slot, name: str, source: str = "") -> StageKind:
    """The registered kind, or a one-line error that names the kinds this process knows."""
    if (slot, name) not in STAGE_KINDS:
        known = ", ".join(known_kinds(slot)) or "none"
        raise UserError(
            f"unknown {slot} kind '{name}' (known: {known}; a module that registers more is loaded with "
            "`extensions: [module]`, e.g. tisdpo.demo)",
            source=source or None,
        )
    return STAGE_KINDS[(slot, name)]
