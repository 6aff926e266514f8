"""A diffusers AutoencoderKL folder loads as a difflab autoencoder computing the same function
(difflab.training.diffusers_vae): small randomly initialised diffusers configs, saved with
save_pretrained, read back by difflab with no diffusers; encode's mean and log-variance and
decode's output equal to 1e-5; the scaling factor carried over; what difflab cannot compute refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import difflab as dl
from difflab.training.diffusers_vae import autoencoder_from_diffusers, autoencoder_run_from_diffusers

diffusers = pytest.importorskip("diffusers")


def _diffusers_vae(tmp_path, **kw):
    config = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=2,
                  latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.13025)
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(**{**config, **kw}).eval()
    with torch.no_grad():  # random weights that move every path (diffusers zero-initialises nothing here,
        for p in vae.parameters():  # but a perturbation keeps norms and biases away from 1 and 0)
            p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path / "vae"
    vae.save_pretrained(folder)
    return vae, folder


def _assert_same_function(theirs, ours, channels=3, latent=4, size=16, f=4):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, channels, size, size, generator=g) * 2 - 1
    z = torch.randn(2, latent, size // f, size // f, generator=g)
    with torch.no_grad():
        q_theirs, q_ours = theirs.encode(x).latent_dist, ours.encode(x)
        torch.testing.assert_close(q_ours.mean, q_theirs.mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(q_ours.logvar, q_theirs.logvar, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.decode(z), theirs.decode(z).sample, rtol=0, atol=1e-5)
    assert float(q_ours.mean.abs().max()) > 0.1  # a function that moves, not zeros on both sides


def test_a_diffusers_autoencoder_loads_with_the_same_function_and_scale(tmp_path):
    theirs, folder = _diffusers_vae(tmp_path)
    ours = autoencoder_from_diffusers(folder)
    assert ours.downsample_factor == 4 and ours.config["channel_mult"] == (1, 2, 2)
    _assert_same_function(theirs, ours)
    assert ours.latent_scale == pytest.approx(0.13025) and float(ours.shift_factor) == 0.0


def test_as_a_run_folder_it_loads_with_dl_load(tmp_path):
    theirs, folder = _diffusers_vae(tmp_path)
    run = autoencoder_run_from_diffusers(folder, tmp_path / "run")
    loaded = dl.load(run)
    assert loaded.step == 0 and loaded.config.model.name == "autoencoder_kl"
    _assert_same_function(theirs, loaded.ema_model)
    assert loaded.ema_model.latent_scale == pytest.approx(0.13025)
    with pytest.raises(FileExistsError, match="exists"):
        autoencoder_run_from_diffusers(folder, run)


def test_a_pipeline_folder_its_older_attention_names_and_the_options(tmp_path):
    theirs, folder = _diffusers_vae(tmp_path, mid_block_add_attention=True, use_quant_conv=False,
                                    shift_factor=0.0609, block_out_channels=(8, 8, 16))
    state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))  # diffusers < 0.14's names
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for k, v in state.items():
        for new, legacy in old.items():
            k = k.replace(f".attentions.0.{new}.", f".attentions.0.{legacy}.")
        renamed[k] = v
    pipeline = tmp_path / "pipe"
    (pipeline / "vae").mkdir(parents=True)
    (pipeline / "model_index.json").write_text(json.dumps({"vae": ["diffusers", "AutoencoderKL"]}))
    (pipeline / "vae" / "config.json").write_text((folder / "config.json").read_text())
    save_file(renamed, str(pipeline / "vae" / "diffusion_pytorch_model.safetensors"))
    ours = autoencoder_from_diffusers(pipeline)
    assert ours.quant_conv is None and ours.post_quant_conv is not None
    _assert_same_function(theirs, ours)
    assert float(ours.shift_factor) == pytest.approx(0.0609)


def test_no_mid_attention_and_one_channel(tmp_path):
    theirs, folder = _diffusers_vae(tmp_path, in_channels=1, out_channels=1, mid_block_add_attention=False,
                                    down_block_types=("DownEncoderBlock2D",) * 2,
                                    up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                    layers_per_block=1, latent_channels=2)
    ours = autoencoder_from_diffusers(folder)
    assert ours.encoder_mid.attn is None
    _assert_same_function(theirs, ours, channels=1, latent=2, f=2)


@pytest.mark.parametrize("change, match", [
    ({"_class_name": "AutoencoderTiny"}, "_class_name 'AutoencoderTiny'"),
    ({"act_fn": "gelu"}, "act_fn 'gelu'"),
    ({"down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D"]},
     "down_block_types 'AttnDownEncoderBlock2D'"),
    ({"latents_mean": [0.0] * 4}, "latents_mean"),
    ({"block_out_channels": [8, 12, 16]}, "integer multiples of the first"),
])
def test_what_difflab_cannot_compute_is_refused_by_name(tmp_path, change, match):
    _, folder = _diffusers_vae(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=match):
        autoencoder_from_diffusers(folder)


def test_weights_that_do_not_fit_and_missing_files_are_named(tmp_path):
    _, folder = _diffusers_vae(tmp_path)
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    del state["decoder.conv_out.bias"]
    save_file(state, str(weights))
    with pytest.raises(ValueError, match="missing 'decoder_out.bias'"):
        autoencoder_from_diffusers(folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        autoencoder_from_diffusers(folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        autoencoder_from_diffusers(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no config.json"):
        autoencoder_from_diffusers(tmp_path)
