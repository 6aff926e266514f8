"""`difflab sample` for the networks that need more than an image grid: a network that learns its
variance (--variance, and what the other samplers do with it) and a video network (clips as a GIF
or a frame grid)."""

from pathlib import Path

import pytest
import torch
from PIL import Image
from video_runs import train_video_run

import difflab as dl
from difflab.cli import main
from difflab.cli import sample as sample_cli

REPO = Path(__file__).resolve().parents[2]  # tests/cli/ -> the repository root


@pytest.fixture(scope="module")
def hybrid_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("hybrid") / "run"
    assert main(["train", "--config", str(REPO / "configs" / "digits_hybrid.yaml"), "--out", str(run), "--steps", "4",
                 "--set", "sample.every=-1", "--set", "model.kwargs.width=32", "--quiet"]) == 0
    return run


def test_a_learned_variance_run_samples_with_it_and_says_what_other_samplers_read(hybrid_run, tmp_path, capsys):
    x_pt = tmp_path / "x.pt"
    assert main(["sample", "--ckpt", str(hybrid_run), "--sampler", "ddpm", "--steps", "5", "--label", "3",
                 "--n", "4", "--out", str(tmp_path / "a.png"), "--save-tensor", str(x_pt)]) == 0
    run = dl.load(hybrid_run)
    learned = run.sample(4, "ddpm", 5, labels=3, seed=0)
    assert torch.equal(torch.load(x_pt), learned)
    assert main(["sample", "--ckpt", str(hybrid_run), "--sampler", "ddpm", "--steps", "5", "--label", "3",
                 "--n", "4", "--variance", "beta", "--out", str(tmp_path / "b.png"), "--save-tensor", str(x_pt)]) == 0
    beta = torch.load(x_pt)
    assert torch.equal(beta, run.sample(4, "ddpm", 5, labels=3, seed=0, variance="beta"))
    assert not torch.equal(beta, learned)
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(hybrid_run), "--sampler", "ddim", "--steps", "3", "--n", "2",
                 "--out", str(tmp_path / "c.png")]) == 0
    assert "uses its mean prediction only" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(hybrid_run), "--sampler", "ddim", "--variance", "beta", "--n", "2",
                 "--out", str(tmp_path / "d.png")]) == 2
    assert "--variance chooses DDPM's step variance" in capsys.readouterr().err


def test_clips_are_written_as_a_gif_or_a_frame_grid(tmp_path, capsys):
    run = train_video_run(tmp_path / "video")
    gif, png = tmp_path / "clips.gif", tmp_path / "clips.png"
    assert main(["sample", "--ckpt", str(run), "--n", "3", "--steps", "2", "--label", "5", "--out", str(gif)]) == 0
    assert Image.open(gif).n_frames == 4
    assert main(["sample", "--ckpt", str(run), "--n", "3", "--steps", "2", "--label", "5", "--out", str(png)]) == 0
    assert Image.open(png).size == (4 * 12 + 5 * 2, 3 * 12 + 4 * 2)  # a clip a row, its frames across
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(run), "--n", "1", "--steps", "2", "--out", str(tmp_path / "c.jpg")]) == 2
    assert ".gif" in capsys.readouterr().err


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("text") / "run"
    kw = ["in_channels=1", "image_size=16", "channels=8", "num_res_blocks=1", "norm_groups=4",
          "num_heads=1", "max_length=12", "text_width=16", "text_depth=1", "text_heads=2"]
    sets = [f"model.kwargs.{k}" for k in kw] + ["data.kwargs.n=32", "sample.every=-1", "batch_size=8"]
    assert main(["train", "--config", str(REPO / "configs" / "digits_text.yaml"), "--out", str(run), "--steps", "2",
                 "--quiet", *[a for s in sets for a in ("--set", s)]]) == 0
    return run


def test_prompts_give_a_row_each(text_run, tmp_path, capsys):
    x_pt, out = tmp_path / "x.pt", tmp_path / "grid.png"
    assert main(["sample", "--ckpt", str(text_run), "--prompt", "a bold 7 on the left", "--prompt", "the digit 3 at the top right",
                 "--n", "3", "--steps", "2", "--guidance", "3", "--out", str(out), "--save-tensor", str(x_pt)]) == 0
    x = torch.load(x_pt)
    run = dl.load(text_run)
    want = run.sample(6, "ddim", 2, guidance=3.0, seed=0,
                      prompts=["a bold 7 on the left"] * 3 + ["the digit 3 at the top right"] * 3)
    assert torch.equal(x, want)
    assert Image.open(out).size == (3 * 16 + 4 * 2, 2 * 16 + 3 * 2)  # 3 columns, a row per prompt
    capsys.readouterr()
    with pytest.warns(UserWarning, match="12"):  # longer than max_length: truncated, as CLIP's tokenizer does
        assert main(["sample", "--ckpt", str(text_run), "--prompt", "a bold 7 at the top right corner on the left at the bottom",
                     "--n", "1", "--steps", "1", "--out", str(tmp_path / "t.png")]) == 0


def test_a_composed_prompt_samples_as_the_library_does(text_run, tmp_path, monkeypatch):
    x_pt = tmp_path / "x.pt"
    needs = []  # the memory check counts the network's batch: (K + 1) n for K parts under guidance
    real_check = sample_cli.check_memory
    monkeypatch.setattr(sample_cli, "check_memory", lambda need, *a: needs.append(need) or real_check(need, *a))
    assert main(["sample", "--ckpt", str(text_run), "--prompt", "a 7 AND bold strokes AND on the left", "--prompt", "a 3",
                 "--n", "2", "--steps", "2", "--guidance", "3", "--out", str(tmp_path / "g.png"),
                 "--save-tensor", str(x_pt)]) == 0
    want = dl.load(text_run).sample(4, "ddim", 2, guidance=3.0, seed=0,
                                    prompts=["a 7 AND bold strokes AND on the left"] * 2 + ["a 3"] * 2)
    plain = dl.load(text_run).sample(4, "ddim", 2, guidance=3.0, seed=0, prompts=["a 7 bold strokes on the left"] * 2
                                     + ["a 3"] * 2)
    x = torch.load(x_pt)
    assert torch.equal(x, want) and not torch.equal(x[:2], plain[:2])
    torch.testing.assert_close(x[2:], plain[2:], rtol=1e-4, atol=1e-4)  # one part (the rest padding): plain guidance
    assert main(["sample", "--ckpt", str(text_run), "--prompt", "a 3", "--n", "4", "--steps", "1", "--guidance", "3",
                 "--out", str(tmp_path / "h.png")]) == 0
    image = 16 * 16 * 4  # bytes of one float32 sample
    assert needs == [(2 * 4 + 2 * 4 * 4) * image, (2 * 4 + 2 * 2 * 4) * image]


def test_a_negative_prompt_samples_as_the_library_does(text_run, tmp_path):
    """--negative-prompt once for every --prompt, or once per --prompt: run.sample(negative_prompts=)
    and dl.sample(negative_cond=) with the tokenized ids give the same samples."""
    x_pt = tmp_path / "x.pt"
    assert main(["sample", "--ckpt", str(text_run), "--prompt", "a 7", "--prompt", "a 3 AND on the left",
                 "--negative-prompt", "bold", "--negative-prompt", "thin", "--n", "2", "--steps", "2",
                 "--guidance", "3", "--out", str(tmp_path / "g.png"), "--save-tensor", str(x_pt)]) == 0
    run = dl.load(text_run)
    prompts, negative = ["a 7"] * 2 + ["a 3 AND on the left"] * 2, ["bold"] * 2 + ["thin"] * 2
    want = run.sample(4, "ddim", 2, guidance=3.0, seed=0, prompts=prompts, negative_prompts=negative)
    assert torch.equal(torch.load(x_pt), want)
    ids = dl.training.generate.prompts_for(prompts, 4, run.tokenizer)
    neg = run.tokenizer.encode(negative)
    direct = dl.sample(run.ema_model, run.proc, (4, *run.sample_shape), "ddim", 2, cond=ids, guidance=3.0,
                       negative_cond=neg, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(direct, want, rtol=1e-5, atol=1e-5)
    assert not torch.equal(want, run.sample(4, "ddim", 2, guidance=3.0, seed=0, prompts=prompts))  # (a 2-step model)
    assert main(["sample", "--ckpt", str(text_run), "--prompt", "a 7", "--negative-prompt", "bold", "--n", "2",
                 "--steps", "2", "--guidance", "3", "--out", str(tmp_path / "h.png"), "--save-tensor", str(x_pt)]) == 0
    assert torch.equal(torch.load(x_pt), run.sample(2, "ddim", 2, guidance=3.0, seed=0, prompts="a 7",
                                                    negative_prompts="bold"))
    with pytest.raises(ValueError, match="one caption, not parts"):
        run.sample(2, "ddim", 1, guidance=3.0, prompts="a 7", negative_prompts="bold AND thin")
    with pytest.raises(ValueError, match="go with prompts="):
        run.sample(2, "ddim", 1, negative_prompts="bold")


@pytest.mark.parametrize("args, message", [
    (["--prompt", "a purple 7"], "'purple'"),
    (["--prompt", "a 7 AND purple"], "'purple'"),
    (["--prompt", "a 7 AND "], "empty part"),
    (["--guidance", "3"], "needs --prompt"),
    (["--prompt", "a 7", "--label", "7"], "drop --label"),
    (["--prompt", "a 7", "--negative-prompt", "purple", "--guidance", "3"], "'purple'"),
    (["--prompt", "a 7", "--negative-prompt", "bold"], "add --guidance W"),
    (["--negative-prompt", "bold", "--guidance", "3"], "goes with --prompt"),
    (["--prompt", "a 7", "--prompt", "a 3", "--prompt", "a 2", "--negative-prompt", "bold", "--negative-prompt",
      "thin", "--guidance", "3"], "once per --prompt (3), got 2"),
])
def test_prompt_mistakes_are_named(text_run, tmp_path, capsys, args, message):
    assert main(["sample", "--ckpt", str(text_run), "--n", "1", "--steps", "1", "--out", str(tmp_path / "a.png"),
                 *args]) == 2
    assert message in capsys.readouterr().err


def test_a_prompt_for_a_class_model_says_to_use_a_label(hybrid_run, tmp_path, capsys):
    assert main(["sample", "--ckpt", str(hybrid_run), "--prompt", "a 7", "--out", str(tmp_path / "a.png")]) == 2
    assert "--prompt needs a text model" in capsys.readouterr().err
