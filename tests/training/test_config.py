"""The training config (difflab.training.config): errors that name the field and the allowed values,
YAML/JSON files, command-line overrides, the process and its options."""

from pathlib import Path

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
        ({"loss": "hinge"}, ["'loss'", "hinge", "diffusion, hybrid, masked, superres, vlb"]),
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


# ------------------------------------------------------------- few-step generation (issue 23)
@pytest.mark.parametrize(
    "changes, words",
    [
        ({"consistency": {"s0": 20, "s1": 10}}, ["'consistency.s1'", "got 10", "from s0 = 20", "s1 >= s0"]),
        ({"consistency": {"s0": 0}}, ["'consistency.s0'", ">= 1"]),
        ({"consistency": {"boundary": 0.0}}, ["'consistency.boundary'", "> 0"]),
        ({"consistency": {"huber_c": -0.1}}, ["'consistency.huber_c'", ">= 0"]),
        ({"consistency": {"solver": "rk4"}}, ["'consistency.solver'", "'rk4'", "euler, dpm_solver, heun"]),
        ({"consistency": {"guidance": 2.0}}, ["'consistency.guidance'", "a pair [w_min, w_max]"]),
        ({"consistency": {"guidance": [1.0, 2.0, 3.0]}}, ["'consistency.guidance'", "a pair [w_min, w_max]"]),
        ({"consistency": {"guidance": [3.0, 1.0]}}, ["'consistency.guidance'", "[3.0, 1.0]", "w_min <= w_max"]),
        ({"consistency": {"guidance": [1.0, "2"]}}, ["'consistency.guidance[1]'", "a number"]),
        ({"consistency": {"net_prediction": "score"}}, ["'consistency.net_prediction'", "eps, x0, v, velocity"]),
        ({"distill": {"method": "reflow"}}, ["'distill.method'", "'reflow'", "progressive, consistency, guided"]),
        ({"distill": {"method": "progressive", "sigmas": [1.0, 2.0, 0.0]}},
         ["'distill.sigmas'", "strictly decreasing noise levels ending at 0"]),
        ({"distill": {"method": "progressive", "sigmas": [2.0, 1.0, 1.0, 0.0]}},
         ["'distill.sigmas'", "strictly decreasing"]),
        ({"distill": {"method": "progressive", "sigmas": [2.0, 1.0]}}, ["'distill.sigmas'", "ending at 0"]),
        ({"distill": {"method": "progressive", "sigmas": [0.0]}}, ["'distill.sigmas'", "at least 2 noise levels"]),
        ({"distill": {"method": "progressive", "sigmas": [2.0, -1.0, 0.0]}}, ["'distill.sigmas[1]'", ">= 0"]),
        ({"distill": {"sigmas": [2.0, 0.0]}}, ["'distill.sigmas'", "set method: progressive"]),
        ({"distill": {"method": "consistency", "sigmas": [2.0, 0.0]}},
         ["'distill.sigmas'", "set method: progressive"]),
        ({"distill": {"teacher": 3}}, ["'distill.teacher'", "run folder (a string)"]),
        ({"distill": {"teacher_step": -1}}, ["'distill.teacher_step'", ">= 0"]),
        ({"distill": {"reparam_steps": 1.5}}, ["'distill.reparam_steps'", "integer"]),
    ],
)
def test_consistency_and_distill_errors_name_the_field_and_the_fix(changes, words):
    d = tiny().to_dict()
    for k, v in changes.items():
        d[k].update(v)
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict(d)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_consistency_model_runs_are_consistency_training_and_consistency_or_guided_distillation():
    x0 = {"diffusion.prediction": "x0"}  # (a consistency model's process predicts x0: f itself)
    assert not tiny().consistency_model
    assert tiny(loss="consistency", **x0).consistency_model
    for method, wrapped in (("consistency", True), ("guided", True), ("progressive", False)):
        assert tiny(**{"distill.method": method}, **x0).consistency_model is wrapped
    with pytest.raises(ValueError, match="'diffusion.prediction'.*predicts x0"):
        tiny(loss="consistency")  # the chain's eps: f would be read back through 1 / a
    with pytest.raises(ValueError, match="'cuda_graph'.*captured step"):
        tiny(loss="consistency", cuda_graph=True, **x0)
    with pytest.raises(ValueError, match="'distill.reparam_steps'.*only steps = 8"):
        tiny(**{"distill.method": "progressive", "distill.reparam_steps": 8, "diffusion.prediction": "v"})
    # the sections survive a config file (a student's run folder reloads as the student it is)
    cfg = tiny(**{"distill.method": "progressive", "distill.sigmas": [3.0, 0.5, 0.0], "distill.teacher": "runs/t",
                  "distill.teacher_step": 7, "consistency.guidance": [1.0, 5.0], "consistency.solver": "heun"})
    assert config_from_text(config_to_text(cfg)) == cfg


def test_build_model_wraps_a_consistency_model_and_marks_a_progressive_students_levels():
    """A consistency model is the config's network in models.ConsistencyModel (the network's weights
    under net.*) with the section's boundary and net_prediction and the process's sigma_min; a
    progressive student carries distill.sigmas as distilled_sigmas (dl.sample's levels for it)."""
    plain = build_model(tiny())
    cfg = tiny(**{"distill.method": "consistency", "diffusion.prediction": "x0", "consistency.boundary": 0.05,
                  "consistency.net_prediction": "v"})
    model = build_model(cfg)
    assert isinstance(model, dl.models.ConsistencyModel) and isinstance(model.net, dl.models.MLPDenoiser)
    assert set(model.state_dict()) == {f"net.{k}" for k in plain.state_dict()}
    assert (model.boundary, model.net_prediction) == (0.05, "v")
    assert model.sigma_min == build_process(cfg).sigma_min and model.proc.prediction == "x0"
    assert getattr(model, "distilled_sigmas", None) is None and getattr(plain, "distilled_sigmas", None) is None
    # net_prediction null: the process's own prediction
    assert build_model(tiny(**{"distill.method": "guided", "diffusion.prediction": "x0"})).net_prediction == "x0"
    student = build_model(tiny(**{"distill.method": "progressive", "distill.sigmas": [3.0, 0.5, 0.0]}))
    assert isinstance(student, dl.models.MLPDenoiser) and student.distilled_sigmas == (3.0, 0.5, 0.0)
    # configs/digits_ct.yaml: consistency training from scratch, the MLP in EDM's preconditioning inside
    ct = load_config(Path(__file__).resolve().parents[2] / "configs" / "digits_ct.yaml")
    assert ct.loss == "consistency" and ct.consistency_model and ct.sample.sampler == "consistency"
    model = build_model(ct)
    assert isinstance(model, dl.models.ConsistencyModel) and isinstance(model.net, dl.models.EDMPrecond)
    assert all(k.startswith("net.net.") for k in model.state_dict()) and model.boundary == 0.5
    assert model.sigma_min == build_process(ct).sigma_min
