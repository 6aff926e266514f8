"""A latent run (training/latent_data.py, through the trainer and dl.load): it trains on the
autoencoder's latents of its images, carries its autoencoder, caches the latents, resumes exactly
from its own folder, and samples decoded images of the pixel shape; its refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from latent_runs import autoencoder_run, latent_config
from safetensors import safe_open

import difflab as dl
from difflab.data.grids import save_image_grid
from difflab.training import Trainer, export_model, train
from difflab.training import latent_data
from difflab.training.latent import CODEC_BATCH, decode_latents
from difflab.training.latent_data import LATENT_CACHE


@pytest.fixture(scope="module")
def ae_dir(tmp_path_factory):
    return autoencoder_run(tmp_path_factory.mktemp("ae") / "ae")


def _cache(run) -> tuple[torch.Tensor, dict]:
    with safe_open(str(run / LATENT_CACHE), framework="pt") as f:
        return f.get_tensor("latents"), json.loads(f.metadata()["key"])


def _drawn_latents(ae, x: torch.Tensor, seed: int) -> torch.Tensor:
    """s (mean + std eps - shift), eps from a CPU generator seeded ``seed``, CODEC_BATCH images a draw."""
    g = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), CODEC_BATCH):
            q = ae.encode(x[i:i + CODEC_BATCH])
            eps = torch.randn(q.mean.shape, generator=g)
            out.append((q.mean + q.std * eps - ae.shift_factor) * float(ae.scaling_factor))
    return torch.cat(out)


def _same_weights(a, b) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_a_latent_run_trains_on_the_latents_and_samples_decoded_images(tmp_path, ae_dir):
    cfg = latent_config(ae_dir, **{"sample.every": 0, "sample.per_class": 2})
    train(cfg, tmp_path / "run", progress=False)
    ae = dl.load(ae_dir).ema_model
    x, _ = dl.data.load("digits")

    # trained on one draw of q(z | x) per image, s (z - shift), drawn with the run's seed
    cached, key = _cache(tmp_path / "run")
    assert torch.allclose(cached, _drawn_latents(ae, x, cfg.seed), atol=1e-6)
    assert key["posterior"] == "sample" and key["shape"] == [len(x), 1, 8, 8]

    # the run carries its autoencoder (a run folder of its own), and dl.load decodes with it
    run = dl.load(tmp_path / "run")
    _same_weights(run.autoencoder, ae)
    assert dl.load(tmp_path / "run" / "autoencoder").step == dl.load(ae_dir).step
    assert run.sample_shape == (2, 4, 4) and run.image_shape == (1, 8, 8)
    assert run.proc.clip_x0 is None  # latents are not clipped to the pixels' range
    images = run.sample(3, steps=3, labels=[1, 2, 3], seed=0)
    latents = dl.sample(run.ema_model, run.proc, (3, 2, 4, 4), "ddim", 3, cond=torch.tensor([1, 2, 3]),
                        generator=torch.Generator().manual_seed(0))  # dl.sample itself: latents
    assert torch.equal(images, decode_latents(run.autoencoder, latents))
    assert torch.equal(images, ae.decode_latents(latents).clamp(-1, 1))
    assert images.shape == (3, 1, 8, 8)

    # the grid at the end shows decoded digits: 10 rows of 2 images of 8x8 pixels
    grid = next((tmp_path / "run" / "samples").glob("*.png"))
    from PIL import Image

    expected = save_image_grid(torch.zeros(20, 1, 8, 8), tmp_path / "expected.png", nrow=2)
    assert Image.open(grid).size == Image.open(expected).size


def test_a_resume_is_exact_from_the_run_folder_alone_and_reads_the_cache(tmp_path, ae_dir, monkeypatch):
    """The autoencoder's original folder is gone by the resume: the run's copy is used, and the
    cached latents (encoding is made to fail)."""
    source = tmp_path / "ae"
    shutil.copytree(ae_dir, source)
    cfg = latent_config(source)
    train(cfg, tmp_path / "whole", progress=False)
    train(cfg.replace(steps=2), tmp_path / "split", progress=False)
    shutil.rmtree(source)

    def no_encoding(*args, **kwargs):
        raise AssertionError("the resumed run encoded its images again")

    monkeypatch.setattr(latent_data, "encode_images", no_encoding)
    resumed = train(cfg, tmp_path / "split", resume=True, progress=False)
    assert resumed["step"] == 4
    a, b = dl.load(tmp_path / "whole"), dl.load(tmp_path / "split")
    _same_weights(a.model, b.model)
    _same_weights(a.ema_model, b.ema_model)


def test_the_cache_is_encoded_anew_for_another_autoencoder(tmp_path, ae_dir):
    """A run that never reached a checkpoint leaves its cache; a new start with another
    autoencoder (other weights, same shapes) must not train on those latents."""
    other = autoencoder_run(tmp_path / "other", seed=9)
    Trainer(latent_config(ae_dir), tmp_path / "run", progress=False)  # writes the copy and the cache
    first, first_key = _cache(tmp_path / "run")
    Trainer(latent_config(other), tmp_path / "run", progress=False)
    second, second_key = _cache(tmp_path / "run")
    x, _ = dl.data.load("digits")
    assert first_key["autoencoder_sha256"] != second_key["autoencoder_sha256"]
    assert torch.allclose(second, _drawn_latents(dl.load(other).ema_model, x, 1), atol=1e-6)
    assert not torch.allclose(first, second, atol=1e-3)
    _same_weights(dl.load(tmp_path / "run" / "autoencoder").ema_model, dl.load(other).ema_model)

    # the posterior's mean, on request: s (mean - shift)
    Trainer(latent_config(other, **{"latent.posterior": "mean"}), tmp_path / "run", progress=False)
    mean, key = _cache(tmp_path / "run")
    ae = dl.load(other).ema_model
    with torch.no_grad():
        assert torch.allclose(mean, (ae.encode(x).mean - ae.shift_factor) * ae.latent_scale, atol=1e-6)
    assert key["posterior"] == "mean"


def test_the_cache_is_encoded_anew_for_other_images_of_the_same_shape(tmp_path, ae_dir):
    """A new start into a folder whose cache holds the latents of other images (same count and
    shape, same autoencoder and seed) encodes its own: the cache's key holds the data's checksum."""
    x, y = dl.data.load("digits")
    x, y = x[:64], y[:64]
    cfg = latent_config(ae_dir, **{"latent.posterior": "mean"})
    Trainer(cfg, tmp_path / "run", data=(x, y), progress=False)
    first, first_key = _cache(tmp_path / "run")
    mirrored = x.flip(-1)  # other images of the same shape
    Trainer(cfg, tmp_path / "run", data=(mirrored, y), progress=False)
    second, second_key = _cache(tmp_path / "run")
    ae = dl.load(ae_dir).ema_model
    with torch.no_grad():
        assert torch.allclose(second, (ae.encode(mirrored).mean - ae.shift_factor) * ae.latent_scale, atol=1e-6)
    assert not torch.allclose(first, second, atol=1e-3)
    assert first_key["data_sha256"] != second_key["data_sha256"]


def test_refusals_name_the_problem_and_the_fix(tmp_path, ae_dir):
    with pytest.raises(FileNotFoundError, match="latent.autoencoder.*does not exist.*train-autoencoder"):
        Trainer(latent_config(tmp_path / "nowhere"), tmp_path / "a", progress=False)

    diffusion_run = tmp_path / "diffusion"
    train(latent_config(ae_dir, steps=2), diffusion_run, progress=False)
    with pytest.raises(ValueError, match="holds a UNet model, not an autoencoder"):
        Trainer(latent_config(diffusion_run), tmp_path / "b", progress=False)

    # a checkpoint from before the run's end, where the scale is measured
    autoencoder_run(tmp_path / "ae4", steps=4)
    with pytest.raises(ValueError, match="no latent scale factor .*never measured"):
        Trainer(latent_config(tmp_path / "ae4" / "checkpoints" / "step_00000002"), tmp_path / "c", progress=False)

    with pytest.raises(ValueError, match=r"takes 1 input channels but the autoencoder .* latents of 2 channels.*"
                                         r"model.kwargs.in_channels: 2"):
        Trainer(latent_config(ae_dir, **{"model.kwargs.in_channels": 1}), tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match="data.flatten"):
        Trainer(latent_config(ae_dir, **{"data.flatten": True}), tmp_path / "e", progress=False)
    with pytest.raises(ValueError, match=r"'sample.clip_x0' = 1 clamps the x0 estimates of this latent run.*lie in "
                                         r"\[-\d.*remove sample.clip_x0"):
        Trainer(latent_config(ae_dir, **{"sample.clip_x0": 1.0}), tmp_path / "g", progress=False)
    with pytest.raises(ValueError, match="config field 'latent.posterior'.*sample, mean"):
        latent_config(ae_dir, **{"latent.posterior": "median"})
    assert not (tmp_path / "a").exists()

    # another autoencoder in the run's folder: refused by the latents' shape (f = 4 here: 2x2 latents, not 4x4)
    shutil.rmtree(diffusion_run / "autoencoder")
    shutil.copytree(autoencoder_run(tmp_path / "f4", **{"model.kwargs": {"channel_mult": [1, 2, 2]}}),
                    diffusion_run / "autoencoder")
    with pytest.raises(ValueError, match=r"makes latents of shape \(2, 2, 2\) .* trained on latents \(2, 4, 4\)"):
        dl.load(diffusion_run)
    # a latent model without its autoencoder: the folder is named, with the fix
    shutil.rmtree(diffusion_run / "autoencoder")
    with pytest.raises(FileNotFoundError, match=r"autoencoder '.*diffusion/autoencoder' is missing.*cp -r"):
        dl.load(diffusion_run)
    train(latent_config(ae_dir, steps=2), tmp_path / "f", progress=False)
    exported = export_model(tmp_path / "f", tmp_path / "f.safetensors", card=False)
    with pytest.raises(ValueError, match="latent diffusion model and has no autoencoder"):
        dl.load(exported).sample(2, steps=2)


def test_a_run_into_a_folder_that_holds_another_run_writes_nothing(tmp_path, ae_dir, monkeypatch):
    """Refused before the images are encoded (which may take long), and nothing is written."""
    train(latent_config(ae_dir, steps=2), tmp_path / "run", progress=False)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()}
    other = autoencoder_run(tmp_path / "other", seed=9)

    def no_encoding(*args, **kwargs):
        raise AssertionError("the images were encoded before the folder was refused")

    monkeypatch.setattr(latent_data, "encode_images", no_encoding)
    with pytest.raises(FileExistsError, match="already holds a run"):
        Trainer(latent_config(other, steps=2), tmp_path / "run", progress=False)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()} == before
