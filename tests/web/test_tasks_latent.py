"""The page's jobs on a latent diffusion run (web/tasks.py): the images and the denoised previews
are decoded by the run's autoencoder, and the editing jobs give the editing functions' results."""

import io

import numpy as np
import torch
from latent_runs import autoencoder_run, latent_config
from PIL import Image

from difflab.editing import img2img, inpaint
from difflab.training import train
from difflab.web import Catalog, Limits, generate_task, img2img_task, inpaint_task, parse_img2img, parse_inpaint
from difflab.web import parse_sample


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.int32)


def _as_pixels(x: torch.Tensor) -> np.ndarray:
    return np.round((x.clamp(-1, 1).numpy() + 1) * 127.5).astype(np.int32)


def test_the_jobs_of_a_latent_run_decode(tmp_path):
    run_dir = tmp_path / "latent"
    train(latent_config(autoencoder_run(tmp_path / "ae"), steps=2), run_dir, progress=False)
    cat = Catalog([run_dir])
    run = cat[cat.ids()[0]].run
    previews = []
    p = parse_sample({"label": 3, "steps": 4, "seed": 1, "n": 2}, cat, Limits())
    work, total, _ = generate_task(p)
    pngs = work(lambda step, preview=None: previews.append(preview) if preview is not None else None)
    want = run.sample(2, "ddim", 4, 1.0, 3, 1)
    assert [_pixels(png).shape for png in pngs] == [(8, 8)] * 2
    assert all(np.array_equal(_pixels(png), _as_pixels(w[0])) for png, w in zip(pngs, want))
    assert previews and _pixels(previews[-1]).shape == (2 + 8 + 2, 2 + 2 * 10)  # decoded estimates in a row

    image = torch.from_numpy(_as_pixels(want[:1])).float() / 127.5 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:, :] = 1
    p = parse_inpaint({"label": 5, "steps": 4, "seed": 3, "n": 2, "sampler": "ddpm"}, cat, Limits())
    filled = inpaint(run.ema_model, run.proc, image.expand(2, -1, -1, -1), mask.expand(2, -1, -1, -1), "ddpm", 4,
                     cond=torch.full((2,), 5), generator=torch.Generator().manual_seed(3), autoencoder=run.autoencoder)
    pngs = inpaint_task(p, image, mask)[0](lambda *a: None)
    assert len(pngs) == 2 and all(np.array_equal(_pixels(png), _as_pixels(w[0])) for png, w in zip(pngs, filled))
    p = parse_img2img({"steps": 5, "seed": 4, "n": 1, "strength": 0.5}, cat, Limits())
    edited = img2img(run.ema_model, run.proc, image, 0.5, "ddim", 5, generator=torch.Generator().manual_seed(4),
                     autoencoder=run.autoencoder)
    pngs = img2img_task(p, image)[0](lambda *a: None)
    assert np.array_equal(_pixels(pngs[0]), _as_pixels(edited[0, 0]))
