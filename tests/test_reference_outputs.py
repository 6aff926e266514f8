"""Behaviour pinned across refactors: fixed-seed outputs of every sampler and editing function.

Each case runs on the CPU from a fixed seed with small perturbed networks (a U-Net at zero
initialisation outputs zeros, which would pin nothing) and is compared with the outputs recorded
before the speed layer moved out of the samplers (``tests/fixtures/reference_outputs.npz``):

- with the torch build that recorded them (``torch_version`` in the file) bit for bit, by the
  SHA-256 of the output's bytes: a refactor must not change one rounding;
- with any other build to 1e-4 relative to the output's scale: the cases chain at most
  ~100 float32 network calls, each exact to a few ulps (~1e-7 relative) on any build, and
  differences between builds' kernels (summation order in convolutions and matmuls) grow
  through the chain at most linearly, which stays below 1e-5; 1e-4 leaves a factor of ten.

``python tests/test_reference_outputs.py --record`` writes the file anew (only when a change of
numbers is intended, and say why in the commit).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import difflab as dl

DATA = Path(__file__).parent / "fixtures" / "reference_outputs.npz"


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


def _unet(num_classes=None):
    torch.manual_seed(0)
    return _perturbed(dl.models.unet_tiny(num_classes=num_classes), 1)


def _mlp():
    torch.manual_seed(0)
    return _perturbed(dl.models.MLPDenoiser(dim=2), 2)


def _proc(prediction="eps", schedule="linear", T=1000):
    return dl.GaussianDiffusion(dl.schedules.get(schedule, T=T), prediction=prediction)


def _images(n=4, seed=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 8, 8, generator=g) * 2 - 1).clamp(-1, 1)


def _gen(seed=7):
    return torch.Generator().manual_seed(seed)


def _noise(shape, seed=11):
    return torch.randn(shape, generator=_gen(seed))


def _samplers():
    cases = {}
    shape = (4, 1, 8, 8)
    for prediction, schedule in (("eps", "linear"), ("v", "cosine")):
        for sampler, opts in [("ddpm", {}), ("ddim", {}), ("ddim", {"eta": 0.5}), ("dpmpp_2m", {}),
                              ("dpmpp_3m", {}), ("euler", {}), ("euler", {"s_churn": 1.0}), ("heun", {})]:
            name = f"sample_{sampler}{'_' + '_'.join(f'{k}{v}' for k, v in opts.items()) if opts else ''}_{prediction}"

            def run(sampler=sampler, opts=opts, prediction=prediction, schedule=schedule):
                return dl.sample(_unet(), _proc(prediction, schedule), shape, sampler, 6, noise=_noise(shape),
                                 generator=_gen(), **opts)

            cases[name] = run
    cases["sample_ddim_guided"] = lambda: dl.sample(
        _unet(10), _proc(), shape, "ddim", 6, cond=torch.tensor([0, 3, 7, 10]), guidance=3.0,
        noise=_noise(shape))
    cases["sample_ddpm_leading_clip"] = lambda: dl.sample(
        _unet(), _proc(), shape, "ddpm", 6, noise=_noise(shape), generator=_gen(), spacing="leading", clip_x0=1.0)
    cases["sample_ddim_dynamic_threshold"] = lambda: dl.sample(
        _unet(), _proc("x0"), shape, "ddim", 6, noise=_noise(shape), dynamic_threshold=0.9)
    cases["sample_dpmpp_2m_karras"] = lambda: dl.sample(
        _unet(), _proc(), shape, "dpmpp_2m", 6, noise=_noise(shape), spacing="karras")
    cases["sample_mlp_ddim"] = lambda: dl.sample(_mlp(), _proc(), (16, 2), "ddim", 10, noise=_noise((16, 2)))
    cases["sample_analytic_heun"] = lambda: dl.sample(
        dl.models.GaussianMixtureDenoiser(_proc(), torch.tensor([[-1.0, 0.5], [1.0, -0.5]]), 0.2),
        _proc(), (16, 2), "heun", 5, noise=_noise((16, 2)).double())
    cases["sample_channels_last"] = lambda: dl.sample(  # recorded as dl.sample(..., channels_last=True)
        dl.accel.accelerate(_unet(), channels_last=True), _proc(), shape, "ddim", 6, noise=_noise(shape))
    # batch 16 of 32 channels: the upsampling convolution in its folded (transposed) form, which
    # the model computed by default before the speed layer took the folded forms out of it
    cases["sample_unet_folded_upsample"] = lambda: dl.sample(
        dl.accel.accelerate(_perturbed(dl.models.unet_tiny(channels=32), 5), upsample="transposed"), _proc(),
        (16, 1, 8, 8), "ddim", 3, noise=_noise((16, 1, 8, 8)))
    cases["invert"] = lambda: dl.invert(_unet(), _proc(), _images(), steps=6)
    return cases


def _superres():
    torch.manual_seed(0)
    model = dl.editing.LowResConditioned("unet_tiny", scale=2, image_channels=1)
    return _perturbed(model, 4)


def _editing():
    E = dl.editing
    mask = E.parse_mask("half:bottom", (8, 8))
    return {
        "inpaint_ddpm": lambda: E.inpaint(_unet(), _proc(), _images(), mask, "ddpm", 6, generator=_gen()),
        "inpaint_repaint": lambda: E.inpaint(_unet(), _proc(), _images(), mask, "ddpm", 6, jump_length=2,
                                             resample=2, generator=_gen()),
        "inpaint_ddim": lambda: E.inpaint(_unet(), _proc(), _images(), mask, "ddim", 6, generator=_gen()),
        "img2img": lambda: E.img2img(_unet(), _proc(), _images(), strength=0.6, steps=6, generator=_gen()),
        "img2img_ddpm": lambda: E.img2img(_unet(), _proc(), _images(), strength=0.4, sampler="ddpm", steps=6,
                                          generator=_gen()),
        "upscale": lambda: E.upscale(_superres(), _proc(), _images(2)[:, :, :4, :4], steps=6,
                                     noise=_noise((2, 1, 8, 8))),
        "reconstruct": lambda: E.reconstruct(_unet(), _proc(), _images(2), steps=6),
        "interpolate": lambda: E.interpolate(_unet(), _proc(), _images(2)[0], _images(2)[1], frames=4, steps=6),
        "interpolate_latents": lambda: E.interpolate(_unet(), _proc(), _images(2)[0], _images(2)[1], frames=3,
                                                     steps=6, latents=True),
    }


def cases() -> dict:
    return {**_samplers(), **_editing()}


def _digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def _run(fn) -> torch.Tensor:
    with torch.no_grad():
        torch.manual_seed(1234)  # anything drawing from the global generator draws alike
        out = fn()
    return out.detach().cpu()


@pytest.fixture(scope="module")
def recorded():
    with np.load(DATA) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(bytes(arrays.pop("__meta__")).decode())
    return arrays, meta


@pytest.mark.parametrize("name", sorted(cases()))
def test_output_unchanged(name, recorded):
    arrays, meta = recorded
    assert name in arrays, f"no recorded output for {name}: record with --record when adding a case"
    out = _run(cases()[name])
    want = torch.from_numpy(arrays[name])
    assert out.shape == want.shape and out.dtype == want.dtype
    if torch.__version__ == meta["torch_version"]:
        assert _digest(out) == meta["digests"][name], (
            f"{name} changed: max |diff| {float((out - want).abs().max()):.3g}")
    else:
        scale = float(want.abs().max())
        assert float((out - want).abs().max()) <= 1e-4 * scale, name


def record() -> None:
    torch.set_num_threads(1)  # as the tests run (tests/conftest.py): a thread count changes summation order
    arrays, digests = {}, {}
    for name, fn in sorted(cases().items()):
        out = _run(fn)
        arrays[name], digests[name] = out.numpy(), _digest(out)
        print(f"{name:40s} {digests[name][:16]} {tuple(out.shape)}")
    meta = {"torch_version": torch.__version__, "digests": digests}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    DATA.parent.mkdir(exist_ok=True)
    np.savez_compressed(DATA, **arrays)


if __name__ == "__main__":
    if "--record" in sys.argv:
        record()
