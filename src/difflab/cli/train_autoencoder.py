"""``difflab train-autoencoder``: train the KL autoencoder of latent diffusion from a config file.

    difflab train-autoencoder --config configs/mnist_vae.yaml --out runs/mnist_vae
    difflab train-autoencoder --out runs/mnist_vae --resume --steps 4000     # continue, train longer

The run folder is an ordinary run's (checkpoints, log.csv, config.yaml; samples/ holds training
digits over their reconstructions); at the end the latent scale factor is measured and saved
with the last checkpoint (``dl.load(RUN).ema_model.latent_scale``). A config with
``autoencoder.perceptual_weight`` > 0 names the classifier (``difflab train-classifier``) whose
features the perceptual term compares.
"""

from __future__ import annotations

from ..evaluation.classifier import load_classifier
from ..training.autoencoder import AutoencoderTrainer
from .train import resolve_config

__all__ = ["add_parser"]

_FLAGS = {"steps": "steps", "batch_size": "batch_size", "lr": "optim.lr", "seed": "seed", "device": "device",
          "log_every": "log_every", "ckpt_every": "ckpt_every", "max_time": "max_time", "threads": "cpu_threads"}


def add_parser(sub) -> None:
    p = sub.add_parser("train-autoencoder", help="train the KL autoencoder of latent diffusion from a config file",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML or JSON config with loss: autoencoder (configs/mnist_vae.yaml); "
                                    "optional with --resume")
    p.add_argument("--out", help="run folder (default: runs/<config file name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    p.add_argument("--max-time", type=float, metavar="SECONDS",
                   help="wall-clock budget of the run, resumes included: stop early with a checkpoint")
    p.add_argument("--batch-size", type=int, help="global batch (images per step, all processes)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:<i>")
    p.add_argument("--threads", type=int, metavar="N", help="torch's CPU threads (config cpu_threads)")
    p.add_argument("--log-every", type=int)
    p.add_argument("--ckpt-every", type=int)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="set any config field, e.g. --set autoencoder.kl_weight=1e-5 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)


def _config(args):
    return resolve_config(args, _FLAGS)


def _main(args) -> int:
    cfg, out = _config(args)
    if cfg.loss != "autoencoder":
        raise ValueError(f"the config trains loss {cfg.loss!r}; train-autoencoder trains configs with loss: "
                         "autoencoder (configs/mnist_vae.yaml); diffusion models train with difflab train")
    a = cfg.autoencoder
    features = load_classifier(a.perceptual_classifier) if a.perceptual_weight > 0 else None
    with AutoencoderTrainer(cfg, out, features=features, resume=args.resume, progress=not args.quiet) as trainer:
        if trainer.is_main and trainer.cpu_threads_note:
            print(trainer.cpu_threads_note, flush=True)
        result = trainer.train()
    if trainer.is_main:
        early = " (stopped by max_time)" if result["stopped_by_max_time"] else ""
        print(f"difflab train-autoencoder: {result['step']} steps{early}, final loss {result['loss']:.4f}, "
              f"{result['mean_images_per_sec']:.0f} images/s, {result['seconds']:.1f} s")
        print(f"latent scale factor: {result['scaling_factor']:.6g} (1 / std of the latents over the training data)")
        print(f"checkpoint: {result['checkpoint']}")
    return 0
