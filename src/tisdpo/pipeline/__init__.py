"""The pipeline: recipes expanded into fingerprinted, resumable stages (:mod:`.engine`, :mod:`.recipe`).

Stage kinds beyond the generic ones (the demo's task, tiny model and oracle weights; your own) are known
to it only through :func:`register_stage_kind` (:mod:`.kinds`).
"""

from tisdpo.pipeline.kinds import StageKind, known_kinds, register_stage_kind

__all__ = ["StageKind", "known_kinds", "register_stage_kind"]
