"""The experiments' sizes: what is trained, how many samples, which samplers (tiny, cpu, gpu)."""

from __future__ import annotations

# The MNIST folder of the project's shared data, beside the repository (--mnist-root overrides it).
DEFAULT_MNIST_ROOT = "../shared/data/mnist"

# The 2D runs' training config (model, data, steps and device are added per run).
TOY_RUN = {
    "diffusion": {"schedule": "linear", "T": 1000, "prediction": "eps"},
    "optim": {"lr": 2.0e-3, "warmup_steps": 50, "decay": "cosine", "grad_clip": 1.0},
    "ema": {"decay": 0.995, "warmup": 10},
    "sample": {"every": -1},
    "batch_size": 512,
    "precision": "fp32",
    "log_every": 100,
    "seed": 0,
}

# Few-step sampling at w = 1: every setting against the first one, DDPM with all T steps.
# eta: DDIM's noise (1 = DDPM's posterior variance); fitted: dpmpp_3m on noise levels fitted to
# the trained network by dl.samplers.optimize_sigmas (docs/sampler_quality.md's winner).
FEW_STEP_CPU = ([{"sampler": "ddpm", "steps": k} for k in (1000, 500, 250, 200, 100, 50)]
             + [{"sampler": "ddim", "steps": k, "eta": 1.0} for k in (200, 100, 50)]
             + [{"sampler": "ddim", "steps": k} for k in (200, 100, 50, 20, 10)]
             + [{"sampler": s, "steps": k} for s in ("dpmpp_2m", "dpmpp_3m", "euler") for k in (10, 20, 50)]
             + [{"sampler": "heun", "steps": k} for k in (10, 25, 50)]
             + [{"sampler": "dpmpp_3m", "steps": k, "fitted": True} for k in (5, 10)])

# The CPU size's MNIST network: a small class-conditional U-Net on 14x14 digits (levels 14x14
# and 7x7 with 32 and 64 channels, one residual block per level, attention at 7x7, ADM's
# scale-shift norm): 0.76M parameters, about 0.17 s per step of 128 on 2 cores.
UNET_CPU = {"name": "unet", "kwargs": {"in_channels": 1, "channels": 32, "channel_mult": [1, 2],
                                       "num_res_blocks": 1, "attention_levels": [1],
                                       "use_scale_shift_norm": True, "num_classes": 10}}

SIZES = {
    "tiny": dict(mnist_size=14, toy_steps=40, toy_n=300, toy_ddpm_steps=50, toy_width=64,
                 mnist_model={"name": "mlp", "kwargs": {"dim": 196, "width": 64, "depth": 1, "num_classes": 10}},
                 mnist_flatten=True, mnist_steps=4, mnist_batch=32, mnist_lr=1e-3, n=40, ref_n=400,
                 guidance=[0.0, 1.0, 3.0], ddpm_steps=8, clip_x0=1.0,
                 few_step=[{"sampler": "ddpm", "steps": 8}, {"sampler": "ddpm", "steps": 4},
                        {"sampler": "ddim", "steps": 4, "eta": 1.0}, {"sampler": "ddim", "steps": 2},
                        {"sampler": "dpmpp_2m", "steps": 2}, {"sampler": "dpmpp_3m", "steps": 2, "fitted": True}],
                 fit_n=4, fit_evals=4, fit_reference_steps=8, noise_seeds=2, floor_draws=2,
                 bpd_n=4, bpd_timesteps=3, clf_epochs=1, clf_limit=600, batch=200, floor_n=400, floor_28=False),
    "cpu": dict(mnist_size=14, toy_steps=1200, swiss_steps=4000, toy_n=2000, toy_ddpm_steps=1000, toy_width=128,
                mnist_model=UNET_CPU, mnist_flatten=False, mnist_steps=10000, mnist_batch=128, mnist_lr=2e-3,
                mnist_warmup=500, mnist_ema=0.999, mnist_ema_warmup=10, n=2000, ref_n=10000,
                guidance=[0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0], ddpm_steps=1000, clip_x0=1.0, few_step=FEW_STEP_CPU,
                fit_n=64, fit_evals=None, fit_reference_steps=500, noise_seeds=5, floor_draws=5,
                bpd_n=200, bpd_timesteps=50, clf_epochs=8, clf_limit=None, batch=250),
    "gpu": dict(mnist_size=28, toy_steps=10000, toy_n=10000, toy_ddpm_steps=1000, toy_width=256,
                mnist_model={"name": "unet_mnist", "kwargs": {"num_classes": 10}},
                mnist_flatten=False, mnist_steps=5000, mnist_batch=256, mnist_lr=5e-4, n=10000, ref_n=10000,
                guidance=[0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0], ddpm_steps=1000, clip_x0=1.0,
                few_step=FEW_STEP_CPU + [{"sampler": s, "steps": 100} for s in ("dpmpp_2m", "euler")],
                fit_n=256, fit_evals=None, fit_reference_steps=500, noise_seeds=5, floor_draws=5,
                bpd_n=1000, bpd_timesteps=100, clf_epochs=8, clf_limit=None, batch=1000),
}

# The noise the fitted noise levels are fitted on: no evaluation batch's (batch b is seeded b,
# and seed 7 had made the fit's problems the first samples of batch 7)
FIT_SEED = 1_000_003
