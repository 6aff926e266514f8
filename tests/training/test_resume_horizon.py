"""Resuming with another ``steps`` (difflab.training.trainer): under a decaying LR schedule the
schedule's horizon becomes the new total, from the resume step on, with a note (as diffusers'
training scripts rebuild their scheduler from --max_train_steps); with constant decay the
schedule does not depend on ``steps`` and the longer run stays bit-identical.

Runs: the tiny MLP of tiny_config.py (8 steps at most).
"""

import torch
from tiny_config import tiny

from difflab.training import Trainer, read_checkpoint

WARMUP = {"optim.warmup_steps": 1}  # so that the 4-step decay differs from the 8-step one at once


def _lrs(trainer) -> dict:
    """The learning rate of the next update at each logged step."""
    return {row["step"]: row["lr"] for row in trainer.history}


def test_a_longer_resume_under_cosine_decay_follows_the_longer_schedule_and_says_so(tmp_path, capsys):
    straight = Trainer(tiny(steps=8, log_every=1, **WARMUP), tmp_path / "straight", progress=False)
    straight.train()
    first = Trainer(tiny(steps=4, log_every=1, **WARMUP), tmp_path / "resumed", progress=False)
    first.train()
    capsys.readouterr()
    t = Trainer(tiny(steps=8, log_every=1, **WARMUP), tmp_path / "resumed", resume=True, progress=False)
    err = capsys.readouterr().err
    assert "now ends at step 8 instead of 4" in err and "not bit-identical" in err
    assert _lrs(first)[4] == 0.0  # the 4-step cosine schedule had ended
    assert t.optimizer.param_groups[0]["lr"] == _lrs(straight)[4]  # the next update: the 8-step rate
    t.train()
    assert [_lrs(t)[k] for k in range(5, 9)] == [_lrs(straight)[k] for k in range(5, 9)]
    a, b = read_checkpoint(tmp_path / "straight"), read_checkpoint(tmp_path / "resumed")
    assert not all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # as documented


def test_a_longer_resume_under_constant_decay_is_bit_identical(tmp_path, capsys):
    cfg = {"optim.decay": "constant"}
    Trainer(tiny(steps=8, **cfg), tmp_path / "straight", progress=False).train()
    Trainer(tiny(steps=4, **cfg), tmp_path / "resumed", progress=False).train()
    Trainer(tiny(steps=8, **cfg), tmp_path / "resumed", resume=True, progress=False).train()
    assert "instead of" not in capsys.readouterr().err
    a, b = read_checkpoint(tmp_path / "straight"), read_checkpoint(tmp_path / "resumed")
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
