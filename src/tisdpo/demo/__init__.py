"""The embedded demo: a ground-truth task with known token rewards, a tiny model, oracle weights, the study.

Importing the package registers the demo's pipeline stage kinds (:mod:`tisdpo.demo.stages`).
"""

from tisdpo.demo.stages import register_demo_kinds

register_demo_kinds()  # recipes may name demo_task, demo_factory, oracle and oracle_sign once the demo is imported
