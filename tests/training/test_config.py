"""The training config (difflab.training.config): errors that name the field and the allowed values,
YAML/JSON files, command-line overrides."""

import pytest
from tiny_config import tiny

import difflab as dl
from difflab.training import Trainer, TrainConfig, apply_overrides, load_config


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"precision": "fp8"}, ["'precision'", "fp8", "fp32, bf16, fp16"]),
        ({"optim": {"lr": -1}}, ["'optim.lr'", "-1", "> 0"]),
        ({"optim": {"lrr": 1}}, ["'optim.lrr'", "lr, betas"]),
        ({"model": {"name": "resnet"}}, ["'model.name'", "resnet", "mlp"]),
        ({"diffusion": {"prediction": "score"}}, ["'diffusion.prediction'", "eps, x0, v"]),
        ({"sample": {"sampler": "plms"}}, ["'sample.sampler'", "ddim"]),
        ({"batch_size": 10, "grad_accum": 3}, ["'batch_size'", "grad_accum = 3"]),
        ({"cond_drop_prob": 1.5}, ["'cond_drop_prob'", "< 1"]),
        ({"steps": 2.5}, ["'steps'", "integer"]),
        ({"data": {"name": "imagenet"}}, ["'data.name'", "digits", "toy2d"]),
        ({"ema": {"decay": 1.0}}, ["'ema.decay'", "< 1"]),
        ({"loss": "hinge"}, ["'loss'", "hinge", "diffusion, superres"]),
        ({"compile_options": {"modes": "max-autotune"}}, ["'compile_options'", "modes", "mode, backend"]),
        ({"compile_options": "max-autotune"}, ["'compile_options'", "mapping"]),
        ({"compile_options": {"mode": 3}}, ["'compile_options.mode'", "torch.compile mode"]),
        ({"compile_options": {"fullgraph": "yes"}}, ["'compile_options.fullgraph'", "true or false"]),
        ({"max_time": 0}, ["'max_time'", "> 0"]),
        ({"diffusion": {"weighting": "min_snr_-5"}}, ["'diffusion.weighting'", "gamma must be > 0"]),
        ({"max_time": "1h"}, ["'max_time'", "a number"]),
        ({"activation_memory_budget": 0}, ["'activation_memory_budget'", "> 0", "<= 1"]),
        ({"activation_memory_budget": 1.5}, ["'activation_memory_budget'", "<= 1"]),
    ],
)
def test_config_errors_name_the_field_and_the_allowed_values(changes, words):
    d = tiny().to_dict()
    for k, v in changes.items():
        if isinstance(v, dict):
            d[k].update(v)
        else:
            d[k] = v
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict(d)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_config_files_and_overrides(tmp_path):
    cfg = tiny()
    for name in ("c.yaml", "c.json"):
        dl.training.save_config(cfg, tmp_path / name)
        assert load_config(tmp_path / name) == cfg
    assert apply_overrides(cfg, ["optim.lr=5e-4", "model.kwargs.width=8"]).optim.lr == 5e-4
    opts = apply_overrides(cfg, ["compile_options.mode=max-autotune"]).compile_options
    assert opts == {"mode": "max-autotune"}
    with pytest.raises(ValueError, match="no config field 'optim.nope'"):
        apply_overrides(cfg, ["optim.nope=1"])
    with pytest.raises(ValueError, match="field.path=value"):
        apply_overrides(cfg, ["steps"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    # the data must fit the model: a clear message, not a matmul error from deep inside
    with pytest.raises(ValueError, match="cannot take data 'toy2d' of shape"):
        Trainer(apply_overrides(cfg, ["model.kwargs.dim=3"]), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="cannot be split evenly"):
        with pytest.MonkeyPatch.context() as mp:  # as if under torchrun with 3 processes
            mp.setenv("WORLD_SIZE", "3")
            Trainer(cfg, tmp_path / "run", progress=False)
