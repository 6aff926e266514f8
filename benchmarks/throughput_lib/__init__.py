"""The parts of ``benchmarks/throughput.py`` (the entry point, which keeps the command line).

Measuring -- what is built, run and timed, returning plain rows and dicts:
  networks   the U-Net configurations and the two libraries' networks
  rows       the row table (library, what, configuration) and which rows run, in which order
  speed      the one place that hands difflab its speed options (and reads their environment)
  env        device, sizes and shared inputs of a run
  cases      one iteration of each library's training step and sampling loop
  memory     cuBLAS workspaces and live CUDA storages
  profiling  torch.profiler tables by kind of kernel
  measure    one row: warm-up, timing, memory, FLOPs, sample checks

Reporting and bookkeeping -- reading rows, never measuring:
  verdict    the issue's targets and reference configuration, runs, the summary
  results    the JSON file: meta, merging with stored rows, writing
  report     the printed table and the Markdown for docs/benchmarks.md
  runner     a whole run: rows in order, time budget, skips, JSON after every row; the options
             check and --report shared with benchmarks/dit_throughput.py
"""
