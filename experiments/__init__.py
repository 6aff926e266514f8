"""Research pipelines beside the difflab package, not part of it: scripts that train, evaluate and
write reports with difflab's public API only.

    python experiments/classic.py --size cpu --out docs/experiments     # the classic 2D + MNIST report

``classic.py`` is the entry point; ``settings`` (the sizes), ``runs`` (training, reuse, the row
cache), ``toy2d``, ``mnist`` and ``sampling`` (the experiments) and ``report_text`` (report.md)
are its parts.
"""
