"""Evaluation: preference metrics on held-out pairs; by generation: sample from a policy and a baseline,
score, estimate KL, compare runs.

* :mod:`tisdpo.evaluation.prompts`: prompts and references of a held-out split;
* :mod:`tisdpo.evaluation.generation`: batched sampling and teacher-forced log-probs;
* :mod:`tisdpo.evaluation.scorers`: callable, reward model, safety classifier and ROUGE scorers;
* :mod:`tisdpo.evaluation.rouge`: ROUGE-1/2/L F1;
* :mod:`tisdpo.evaluation.metrics`: the ``gen/*`` metrics (win rate, bootstrap interval, KL ...);
* :mod:`tisdpo.evaluation.report`: Markdown tables and the reward-against-KL plot;
* :mod:`tisdpo.evaluation.run`: ``tisdpo evaluate --generate`` end to end;
* :mod:`tisdpo.evaluation.preference`: the trainer's preference metrics on held-out pairs.

The flags are :class:`tisdpo.config.GenerationArguments`.
"""
