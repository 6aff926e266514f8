"""The trainer on captions: a text model's vocabulary from its training captions (saved with the
run), token ids as the condition, caption dropout to the empty caption, an exact resume, and a
loaded run sampled from prompts; the mismatches (captions for a class model, a text model without
captions, a word it never saw) refused by name."""

import pytest
import torch
from latent_runs import autoencoder_run

import difflab as dl
from difflab.models.text import build_vocab
from difflab.training import Trainer, TrainConfig

TEXT_MODEL = {"name": "text_unet", "kwargs": {
    "in_channels": 1, "image_size": 16, "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
    "norm_groups": 4, "num_heads": 1, "max_length": 12, "text_width": 16, "text_depth": 1, "text_heads": 2}}
DATA = {"name": "captioned_digits", "kwargs": {"n": 48, "attributes": ["position", "stroke"], "seed": 0}}


def text_config(**changes) -> TrainConfig:
    d = {"model": TEXT_MODEL, "diffusion": {"schedule": "cosine", "T": 100}, "data": DATA,
         "optim": {"lr": 1e-3, "warmup_steps": 2}, "ema": {"decay": 0.9, "warmup": 1},
         "sample": {"every": -1, "steps": 3, "guidance": 3.0, "n": 4, "per_class": 2},
         "batch_size": 8, "steps": 4, "log_every": 2, "ckpt_every": 2, "cond_drop_prob": 0.25,
         "device": "cpu", "seed": 1, "cpu_threads": 1}
    d.update(changes)
    return TrainConfig.from_dict(d)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("text") / "run"
    with Trainer(text_config(), out, progress=False) as trainer:
        trainer.train()
        grid = trainer.sample_grid(out / "grid.png")
    assert grid.is_file()
    return out


def test_the_vocabulary_is_the_captions_words_and_travels_with_the_run(text_run):
    captions = dl.data.captioned.captioned_digits(**{**DATA["kwargs"], "attributes": ("position", "stroke")}).captions
    run = dl.load(text_run)
    assert run.config.model.kwargs["vocab"] == build_vocab(captions)
    assert run.tokenizer is run.ema_model.tokenizer and run.num_classes is None
    ids = run.tokenizer.encode(captions[:3])
    assert ids.shape == (3, 12) and (ids[:, 0] > 0).all()


def test_the_condition_is_the_captions_token_ids_and_dropout_empties_whole_captions(tmp_path):
    seen = []

    def spy(model, batch):
        seen.append(batch)
        return model(batch.x0, torch.zeros(len(batch.x0), dtype=torch.long), batch.cond).square().mean()

    with Trainer(text_config(steps=3, cond_drop_prob=0.5), tmp_path / "r", loss_fn=spy, progress=False) as trainer:
        trainer.train()
        want = trainer.model.tokenizer.encode(trainer.captions)
    for b in seen:
        assert torch.equal(b.labels, want[b.index])  # the captions of the batch's images
        empty = (b.cond == 0).all(1)
        assert torch.equal(b.cond[~empty], b.labels[~empty])
        assert torch.equal(empty, b.u < 0.5)  # whole rows, as the dropout draw says
    assert any((b.u < 0.5).any() for b in seen)


def test_a_text_run_resumes_bit_for_bit(tmp_path, text_run):
    with Trainer(text_config(steps=2), tmp_path / "r", progress=False) as trainer:
        trainer.train()
    with Trainer(text_config(), tmp_path / "r", resume=True, progress=False) as trainer:
        trainer.train()
    a = dl.load(tmp_path / "r").ema_model.state_dict()
    b = dl.load(text_run).ema_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_loaded_text_run_samples_from_prompts(text_run):
    run = dl.load(text_run)
    prompts = ["a bold 7 on the left", "three, thin strokes, top right"]
    x = run.sample(2, "ddim", 3, guidance=3.0, prompts=prompts, seed=0)
    assert x.shape == (2, 1, 16, 16) and torch.isfinite(x).all()
    ids = run.tokenizer.encode(prompts)
    direct = dl.sample(run.ema_model, run.proc, (2, 1, 16, 16), "ddim", 3, cond=ids, guidance=3.0,
                       noise=torch.randn((2, 1, 16, 16), generator=torch.Generator().manual_seed(0)), clip_x0=1.0)
    assert torch.allclose(x, direct, atol=1e-6)
    one = run.sample(2, "ddim", 3, prompts=prompts[0], seed=0)  # one prompt for all
    assert torch.allclose(one[0], run.sample(1, "ddim", 3, prompts=prompts[:1], seed=0)[0], atol=1e-6)
    with pytest.raises(ValueError, match="needs prompts="):
        run.sample(2, "ddim", 3, guidance=3.0)
    with pytest.raises(ValueError, match="give prompts= \\(strings\\), not labels="):
        run.sample(2, "ddim", 3, labels=3)
    with pytest.raises(ValueError, match="'purple'"):
        run.sample(2, "ddim", 3, prompts="a purple 7")
    with pytest.raises(ValueError, match="one string or 2 strings"):
        run.sample(2, "ddim", 3, prompts=["a 7"] * 3)


def test_captions_and_models_must_agree(tmp_path):
    with pytest.raises(ValueError, match="has captions, but the model is class-conditional"):
        Trainer(text_config(model={"name": "unet", "kwargs": {**{k: v for k, v in TEXT_MODEL["kwargs"].items()
                                                                 if not k.startswith(("max_", "text_"))},
                                                              "num_classes": 10}}), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="has captions but model 'unet' takes no text"):
        Trainer(text_config(model={"name": "unet", "kwargs": {k: v for k, v in TEXT_MODEL["kwargs"].items()
                                                             if not k.startswith(("max_", "text_"))}}),
                tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="is a text model but the data .* has no captions"):
        Trainer(text_config(data={"name": "captioned_digits", "kwargs": {**DATA["kwargs"], "labels": "digit"}}),
                tmp_path / "c", progress=False)
    vocab = ["a", "7"]  # a vocabulary given in the config must hold the captions' words
    with pytest.raises(ValueError, match="outside the vocabulary|not in the vocabulary|knows only"):
        Trainer(text_config(model={"name": "text_unet", "kwargs": {**TEXT_MODEL["kwargs"], "vocab": vocab}}),
                tmp_path / "d", progress=False)


def test_a_latent_text_run_trains_on_latents_and_samples_decoded_images_from_prompts(tmp_path):
    """configs/mnist_text.yaml's recipe at toy size: captions on the latents of an autoencoder."""
    ae = autoencoder_run(tmp_path / "ae", data={"name": "captioned_digits", "kwargs": {"n": 32, "labels": "digit"}})
    model = {"name": "text_unet", "kwargs": {**TEXT_MODEL["kwargs"], "in_channels": 2, "image_size": 8,
                                             "pooled_context": True}}
    cfg = text_config(model=model, latent={"autoencoder": str(ae)}, steps=2)
    with Trainer(cfg, tmp_path / "run", progress=False) as trainer:
        assert trainer.sample_shape == (2, 8, 8) and trainer.image_shape == (1, 16, 16)
        trainer.train()
    run = dl.load(tmp_path / "run")
    x = run.sample(2, "ddim", 2, guidance=3.0, prompts=["a bold 7 on the left", ""], seed=0)
    assert x.shape == (2, 1, 16, 16) and float(x.abs().max()) <= 1.0
    z = dl.sample(run.ema_model, run.proc, (2, 2, 8, 8), "ddim", 2, cond=run.tokenizer.encode(["a bold 7 on the left", ""]),
                  guidance=3.0, noise=torch.randn((2, 2, 8, 8), generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(x, run.autoencoder.decode_latents(z).clamp(-1, 1), rtol=1e-5, atol=1e-5)
