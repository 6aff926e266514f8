"""generate (difflab.training.generate), the sampling behind run.sample: its negative conditions
(negative_prompts= captions, or dl.sample's negative_cond= passed through), checked against
dl.sample called directly, and their mistakes named. (prompts_for and the prompts themselves:
tests/cli/test_cli_sample.py, tests/samplers/test_denoiser.py.)"""

import pytest
import torch

import difflab as dl
from difflab.training.generate import generate
from networks import tiny_text_model


class _Labelled(torch.nn.Module):
    """A class-conditional network whose output depends on the label: eps = x_t / 2 + label / 10."""
    num_classes = 4

    def forward(self, x, t, cond):
        return x / 2 + cond.view(-1, 1, 1, 1).to(x.dtype) / 10


def test_a_negative_label_passes_through_to_sample():
    """run.sample(labels=1, negative_cond=3) is dl.sample(cond=1, negative_cond=3): the negative label
    takes the null label's place (it took two values of negative_cond before: a TypeError)."""
    proc = dl.GaussianDiffusion(dl.schedules.cosine(100))
    model = _Labelled()
    got = generate(model, proc, 2, (1, 4, 4), steps=3, guidance=3.0, labels=1, seed=0, negative_cond=3)
    want = dl.sample(model, proc, (2, 1, 4, 4), "ddim", 3, cond=torch.ones(2, dtype=torch.long), guidance=3.0,
                     negative_cond=torch.full((2,), 3), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    plain = generate(model, proc, 2, (1, 4, 4), steps=3, guidance=3.0, labels=1, seed=0)
    assert (plain - got).abs().max() > 1e-3


def test_negative_prompt_mistakes_are_named():
    model = tiny_text_model()
    proc = dl.GaussianDiffusion(dl.schedules.cosine(100))
    kw = dict(steps=1, guidance=3.0, prompts="a 7")
    with pytest.raises(ValueError, match="negative_prompts must be one string or 2 strings"):
        generate(model, proc, 2, (1, 8, 8), negative_prompts=["bold"], **kw)
    with pytest.raises(ValueError, match="not both"):
        generate(model, proc, 2, (1, 8, 8), negative_prompts="bold",
                 negative_cond=model.tokenizer.encode(["bold"] * 2), **kw)
