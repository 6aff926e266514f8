"""A reflow run (training/reflow_run.py): the pairs it saves, the weights it starts from, the
coupling it trains with. Its command-line use, resuming and refusals: tests/cli/test_cli_reflow.py."""

import torch
from safetensors.torch import load_file

import difflab as dl
from difflab.training.reflow import generate_pairs
from difflab.training.reflow_run import PAIRS_FILE, reflow


def test_reflow_of_a_conditional_ot_run_starts_from_its_weights_on_its_labelled_pairs(tmp_path):
    """reflow(): pairs of the source's EMA model with labels i mod K, saved; the new run trains with
    the independent coupling (a note says so) from the source's EMA weights (a learning rate of 1e-9
    keeps them: a fresh network of seed 5 would differ)."""
    cfg = dl.training.TrainConfig.from_dict({
        "model": {"name": "mlp", "kwargs": {"dim": 2, "width": 16, "depth": 1, "num_classes": 8}},
        "diffusion": {"process": "flow", "process_kwargs": {"coupling": "ot"}},
        "data": {"name": "toy2d", "kwargs": {"dataset": "8gaussians", "n": 64}},
        "optim": {"lr": 1e-9, "warmup_steps": 1}, "sample": {"every": -1},
        "batch_size": 16, "steps": 2, "ckpt_every": 2, "device": "cpu", "seed": 0,
    })
    dl.training.train(cfg, tmp_path / "flow", progress=False)
    source = dl.load(tmp_path / "flow")
    notes = []
    report = reflow(tmp_path / "flow", tmp_path / "reflow", 16, steps=3, seed=5, eval_n=8, progress=False,
                    say=notes.append)
    assert any("coupling 'ot'" in line for line in notes)
    run = dl.load(tmp_path / "reflow")
    assert run.proc.coupling == "independent" and run.config.seed == 5 and report["straightness"]["after"] >= 0
    for name, weight in source.ema_model.state_dict().items():
        torch.testing.assert_close(run.ema_model.state_dict()[name], weight, rtol=0, atol=1e-6)
    saved = load_file(str(tmp_path / "reflow" / PAIRS_FILE))
    labels = torch.arange(16) % 8
    noise, samples = generate_pairs(source.ema_model, source.proc, 16, (2,), steps=3, cond=labels,
                                    generator=torch.Generator().manual_seed(5))
    assert torch.equal(saved["labels"], labels) and torch.equal(saved["noise"], noise)
    torch.testing.assert_close(saved["samples"], samples)
