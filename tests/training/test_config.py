"""The training config (difflab.training.config): errors that name the field and the allowed values,
YAML/JSON files, command-line overrides, the process and its options."""

import pytest
from tiny_config import tiny, tiny_under

import difflab as dl
from difflab.training import Trainer, TrainConfig, apply_overrides, config_diff, load_config
from difflab.training.build import build_model, build_process
from difflab.training.config import config_from_text, config_to_text


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
        # the process and its options (the DDPM chain's T = 100 of tiny() back at its default)
        ({"diffusion": {"process": "sde"}}, ["'diffusion.process'", "ddpm, vp, ve, edm, flow"]),
        ({"diffusion": {"process": "edm", "T": 1000, "process_kwargs": {"sigma_data": -1}}},
         ["config field 'diffusion.process_kwargs'", "'edm' (EDM)", "sigma_data must be a finite number > 0"]),
        ({"diffusion": {"process": "flow", "T": 1000, "process_kwargs": {"coupling": "sinkhorn"}}},
         ["config field 'diffusion.process_kwargs'", "unknown coupling 'sinkhorn'", "'ot'"]),
        ({"diffusion": {"process": "vp", "T": 1000, "process_kwargs": {"beta": 3}}},
         ["config field 'diffusion.process_kwargs'", "'beta'", "its options: beta_min, beta_max, t_min"]),
        ({"diffusion": {"process": "edm", "T": 1000, "process_kwargs": {"prediction": "x0"}}},
         ["'diffusion.process_kwargs'", "prediction is set by the config field diffusion.prediction"]),
        ({"diffusion": {"process": "edm", "T": 1000, "prediction": "eps"}},
         ["'diffusion.prediction'", "'eps'", "process 'edm' trains one of x0", "null: its default, x0"]),
        ({"diffusion": {"process": "ddpm", "prediction": "velocity"}},
         ["'diffusion.prediction'", "process 'ddpm' trains one of eps, x0, v", "null: its default, eps"]),
        ({"diffusion": {"process": "flow", "T": 1000, "schedule_kwargs": {"s": 0.008}}},
         ["'diffusion.schedule_kwargs'", "applies to process 'ddpm' only", "diffusion.process_kwargs"]),
        ({"diffusion": {"process": "flow"}}, ["'diffusion.T'", "got 100", "applies to process 'ddpm' only"]),
        ({"diffusion": {"process": "ve", "T": 1000, "schedule": "cosine"}}, ["'diffusion.schedule'", "'ddpm' only"]),
        ({"diffusion": {"process_kwargs": {"sigma_data": 0.5}}},
         ["'diffusion.process_kwargs'", "'ddpm' takes its options as diffusion.schedule, T and schedule_kwargs"]),
        ({"diffusion": {"process": "flow", "T": 1000, "process_kwargs": {"coupling": "ot"}}, "cuda_graph": True},
         ["'cuda_graph'", "coupling 'ot'", "solved on the CPU"]),
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


def test_a_config_names_its_process_and_a_null_prediction_is_the_processs_own():
    """diffusion.process builds any process of difflab.processes with process_kwargs; prediction
    null means the process's default; sample.clip_x0 (else the data's range) is its clip_x0."""
    expected = {"ddpm": ("GaussianDiffusion", "eps"), "vp": ("VPSDE", "eps"), "ve": ("VESDE", "eps"),
                "edm": ("EDM", "x0"), "flow": ("FlowMatching", "velocity")}
    for name, (cls, prediction) in expected.items():
        cfg = tiny_under(name, **{"sample.clip_x0": 2.0})
        proc = build_process(cfg)
        assert type(proc).__name__ == cls and proc.prediction == prediction == cfg.diffusion.resolved_prediction
        assert proc.clip_x0 == 2.0
    flow = build_process(tiny_under("flow", {"coupling": "ot", "time_sampling": "logit_normal", "logit_std": 0.5}))
    assert (flow.coupling, flow.time_sampling, flow.logit_std) == ("ot", "logit_normal", 0.5)
    assert build_process(tiny_under("flow", **{"diffusion.prediction": "eps"})).prediction == "eps"
    edm = tiny_under("edm", {"sigma_data": 0.7})
    assert build_process(edm).sigma_data == 0.7 and build_model(edm).sigma_data == 0.7  # EDMPrecond's, from the process
    # a per-key override of process_kwargs, as of model.kwargs
    assert apply_overrides(edm, ["diffusion.process_kwargs.P_std=1.0"]).diffusion.process_kwargs == {
        "sigma_data": 0.7, "P_std": 1.0}
    with pytest.raises(ValueError, match="'diffusion.process'.*EDM's preconditioning .* super-resolution"):
        apply_overrides(edm, ["model.name=superres", "model.kwargs={}", "loss=superres"])


def test_a_config_saved_before_the_process_field_loads_as_the_ddpm_chain_it_was():
    """Configs written before diffusion.process existed name no process and spell out
    prediction: eps (its old default): they load as the DDPM chain, and mean the same as today's
    config with a null prediction (config_diff compares what a field means), so such runs resume."""
    old = config_to_text(tiny()).replace("  process: ddpm\n  process_kwargs: {}\n", "").replace(
        "\n  prediction: null", "\n  prediction: eps")  # (diffusion's; not consistency.net_prediction)
    assert "process" not in old and "prediction: eps" in old
    cfg = config_from_text(old)
    assert cfg.diffusion.process == "ddpm" and cfg.diffusion.process_kwargs == {}
    assert build_process(cfg).signature() == build_process(tiny()).signature()
    assert config_diff(cfg, tiny(), ignore=()) == []
    assert [k for k, _, _ in config_diff(cfg, tiny(**{"diffusion.prediction": "v"}), ignore=())] == [
        "diffusion.prediction"]
    changed = config_diff(tiny(), tiny_under("flow"), ignore=())
    assert [k for k, _, _ in changed] == ["diffusion.T", "diffusion.prediction", "diffusion.process"]
    assert ("diffusion.prediction", "eps", "velocity") in changed  # what null means under each process
