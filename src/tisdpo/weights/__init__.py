"""Token weights: from a contrastive pair's token rewards to the weights TIS-DPO trains with.

* the flags of ``tisdpo weights`` are :class:`tisdpo.config.WeightsArguments`;
* :mod:`tisdpo.weights.prompts`: the contrastive prompts of method P (presets or text);
* :mod:`tisdpo.weights.estimate`: scoring with the contrast in resumable parts, and the weights;
* :mod:`tisdpo.weights.transforms`: how rewards become weights (exp, rank_based ...);
* :mod:`tisdpo.weights.io`: the weights file and its provenance.
"""
