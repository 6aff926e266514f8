"""The parts of ``benchmarks/sampler_quality.py`` (the entry point, which keeps the command line).

Measuring -- samples drawn and their distances, returned as rows:
  problems      the exact models (Gaussian mixtures), their true samples, noise and metrics
  samplers      one run of a difflab sampler or of a diffusers scheduler's loop
  measure       the table's runs: every curve, the 10-NFE sweep, the optimised schedules, repeats
  mnist         the same on a trained MNIST network (FID-like distance)

Reporting and bookkeeping -- reading rows, never sampling:
  headline      the 10-NFE headline: each library's best rows and the verdicts beside them
  tables        the Markdown tables (curves, sweep, repeats)
  report        docs/sampler_quality.{md,png}
  mnist_report  sampler_quality_mnist.{md,json,png}
"""
