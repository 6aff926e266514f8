"""Two processes under torchrun (gloo, CPU) train exactly like one process with the same global batch.

Each step's batch indices and random draws (t, noise, label dropout) are functions of
(seed, step, global sample index), and process r of K takes slice r of every micro-batch. So
the two runs see identical data and draws; the gradient of 2 processes x 2 accumulation steps
(average over ranks of sums of quarter-batch means) equals the one-process full-batch mean up
to floating-point summation order (float32: ~1e-7 relative per step). Ten AdamW steps keep
that at the 1e-7 level, so the tolerances (1e-5 relative on every logged loss, 1e-6 absolute on
weights of size ~0.2) are tight yet leave a wide margin.
"""

import csv
import os
import subprocess
import sys

import pytest
import torch

from tiny_config import TORCHRUN_YAML

from difflab.training import Trainer, read_checkpoint

CONFIG = TORCHRUN_YAML + """\
max_time: 3600   # never reached; exercises process 0's stop decision, broadcast at each log point
"""


def _losses(run):
    return [float(r["loss"]) for r in csv.DictReader(open(run / "log.csv"))]


def test_torchrun_two_processes_match_one_process(tmp_path):
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(CONFIG)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "difflab.cli", "train", "--config", str(cfg_file), "--out", str(tmp_path / "ddp"), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    from difflab.training import load_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # one process, no accumulation: the same 32 samples per step in one batch
        one = load_config(cfg_file).replace(grad_accum=1)
        Trainer(one, tmp_path / "one", progress=False).train()
    finally:
        torch.set_num_threads(threads)

    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "ddp")
    assert len(a) == len(b) == 10
    assert b == pytest.approx(a, rel=1e-5)
    ca, cb = read_checkpoint(tmp_path / "one"), read_checkpoint(tmp_path / "ddp")
    assert cb["state"]["world_size"] == 2 and cb["state"]["step"] == 10
    assert len(cb["rng"]) == 2  # each process's generator states
    for k in ca["model"]:
        torch.testing.assert_close(cb["model"][k], ca["model"][k], rtol=0, atol=1e-6)
        torch.testing.assert_close(cb["ema"][k], ca["ema"][k], rtol=0, atol=1e-6)
    # only process 0 writes: one log, one set of checkpoints
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == [
        "latest", "step_00000005", "step_00000010"]
