"""Reports: every table, plot and page that tisdpo writes is drawn here, in one style.

* :mod:`tisdpo.report.tables`: tables (header + rows) as Markdown or HTML; number formatting.
* :mod:`tisdpo.report.plots`: the shared matplotlib style, atomic PNG saving, the reward-vs-KL frontier.
* :mod:`tisdpo.report.page`: self-contained HTML pages (embedded PNGs) and atomic text files.
* :mod:`tisdpo.report.heatmap`: token heatmaps (HTML, PNG), weight histograms and statistics.
* :mod:`tisdpo.report.examples`: heatmap examples from a weights file (decoding and checking rows).
* :mod:`tisdpo.report.model_card`: the README.md model card of a saved model.

Callers decide *what* to show (``tisdpo.evaluation.report``, ``tisdpo.pipeline.report``, the
``visualize`` and ``compare`` commands); nothing here imports :mod:`tisdpo.commands`.
"""
