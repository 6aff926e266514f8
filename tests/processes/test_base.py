"""The process interface (difflab.processes.base): prediction conversions for any x_t = a x0 + s eps,
each process's training target and loss against closed forms, Min-SNR weighting, time checks."""

import math

import pytest
import torch

import difflab as dl
from difflab.processes import EDM, PREDICTION_TYPES, VESDE, VPSDE, FlowMatching, convert_prediction

F64 = torch.float64


def closed_form_alpha_sigma(proc, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a(t), s(t) of x_t = a x0 + s eps from each paper's formulas, written out here."""
    t = t.to(F64)
    if isinstance(proc, VPSDE):  # Song et al. 2021, eq. 33: log a = -t^2 (b1 - b0) / 4 - t b0 / 2
        a = torch.exp(-0.25 * t**2 * (proc.beta_max - proc.beta_min) - 0.5 * t * proc.beta_min)
        return a, (1 - a**2).sqrt()
    if isinstance(proc, VESDE):  # sigma_min (sigma_max / sigma_min)^t
        return torch.ones_like(t), proc.sigma_lo * (proc.sigma_hi / proc.sigma_lo) ** t
    if isinstance(proc, EDM):  # t = sigma
        return torch.ones_like(t), t
    if isinstance(proc, FlowMatching):  # (1 - t) x0 + t eps
        return 1 - t, t
    raise AssertionError(type(proc))


def processes():
    """Every continuous process with each prediction type it trains."""
    out = []
    for cls in (VPSDE, VESDE, FlowMatching):
        for prediction in cls.predictions:
            out.append(pytest.param(cls, prediction, id=f"{cls.__name__}-{prediction}"))
    out.append(pytest.param(EDM, "x0", id="EDM-x0"))
    return out


def times(proc, n, gen):
    """Times inside the process's training range (EDM's: sigma log-uniform in [0.01, 50])."""
    u = torch.rand(n, generator=gen, dtype=F64)
    if isinstance(proc, EDM):
        return 0.01 * 5000.0**u
    lo, hi = max(proc.time_range()[0], 1e-3), 0.99
    return lo + (hi - lo) * u


@pytest.mark.parametrize("source", PREDICTION_TYPES)
@pytest.mark.parametrize("target", PREDICTION_TYPES)
def test_convert_prediction_is_exact_for_any_alpha_and_sigma(source, target, gen):
    """Random (a, s) far from a^2 + s^2 = 1 and a + s = 1: the formulas are general, not VP's or a flow's."""
    n = 64
    a = (0.05 + 3 * torch.rand(n, 1, generator=gen, dtype=F64))
    s = (0.05 + 5 * torch.rand(n, 1, generator=gen, dtype=F64))
    x0 = torch.randn(n, 3, generator=gen, dtype=F64)
    eps = torch.randn(n, 3, generator=gen, dtype=F64)
    x_t = a * x0 + s * eps
    truth = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "velocity": eps - x0}
    got = convert_prediction(truth[source], x_t, a, s, source, target)
    assert torch.allclose(got, truth[target], rtol=1e-10, atol=1e-10)


def test_convert_prediction_names_unknown_types():
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"unknown prediction type 'score'.*eps, x0, v, velocity"):
        convert_prediction(x, x, 1.0, 1.0, "score", "x0")
    with pytest.raises(ValueError, match=r"unknown prediction type 'noise'"):
        convert_prediction(x, x, 1.0, 1.0, "eps", "noise")


@pytest.mark.parametrize("cls, prediction", processes())
def test_alpha_sigma_q_sample_and_target_are_the_closed_forms(cls, prediction, gen):
    proc = cls(prediction=prediction)
    t = times(proc, 32, gen)
    a, s = closed_form_alpha_sigma(proc, t)
    got_a, got_s = proc.alpha_sigma(t)
    assert torch.allclose(got_a, a, rtol=1e-12) and torch.allclose(got_s, s, rtol=1e-10)
    assert torch.allclose(proc.sigma_of(t), s / a, rtol=1e-10)
    x0 = torch.randn(32, 4, generator=gen, dtype=F64)
    noise = torch.randn(32, 4, generator=gen, dtype=F64)
    assert torch.allclose(proc.q_sample(x0, t, noise), a[:, None] * x0 + s[:, None] * noise, rtol=1e-10)
    target = {"eps": noise, "x0": x0, "v": a[:, None] * noise - s[:, None] * x0, "velocity": noise - x0}
    assert torch.allclose(proc.target(x0, noise, t), target[prediction], rtol=1e-10, atol=1e-12)


class Affine(torch.nn.Module):
    """A model whose output depends on x_t and on its time input, with one trainable weight."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3, dtype=F64))

    def forward(self, x, t, cond=None):
        return self.w * x + 1e-3 * t.to(x.dtype)[:, None]


@pytest.mark.parametrize("cls, prediction", processes())
def test_training_loss_is_the_weighted_regression_on_the_closed_form_target(cls, prediction, gen):
    proc = cls(prediction=prediction)
    model = Affine()
    t = times(proc, 32, gen)
    x0 = torch.randn(32, 4, generator=gen, dtype=F64)
    noise = torch.randn(32, 4, generator=gen, dtype=F64)
    a, s = closed_form_alpha_sigma(proc, t)
    x_t = a[:, None] * x0 + s[:, None] * noise
    out = model(x_t, (t * proc.timestep_scale).float())  # the network's time input
    target = {"eps": noise, "x0": x0, "v": a[:, None] * noise - s[:, None] * x0, "velocity": noise - x0}[prediction]
    weight = (s**2 + 0.25) / (s**2 * 0.25) if cls is EDM else torch.ones_like(t)  # EDM's lambda, sigma_data = 0.5
    expected = (weight * ((out - target) ** 2).mean(1)).mean()
    loss = proc.training_loss(model, x0, t=t, noise=noise)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert model.w.grad is not None and model.w.grad.abs() > 0


@pytest.mark.parametrize("cls, prediction", processes())
def test_min_snr_weights_the_x0_error_by_min_snr_gamma(cls, prediction, gen):
    """Min-SNR-gamma (Hang et al. 2023): whatever the target, weight * ||target error||^2 =
    min(SNR, gamma) ||x0 error||^2 at the same x_t, SNR = a^2 / s^2 from the closed forms."""
    proc = cls(prediction=prediction)
    model = Affine()
    t = times(proc, 64, gen)
    x0 = torch.randn(64, 3, generator=gen, dtype=F64)
    noise = torch.randn(64, 3, generator=gen, dtype=F64)
    gamma = 2.0
    per = proc.training_loss(model, x0, t=t, noise=noise, weighting=f"min_snr_{gamma:g}", reduction="none")
    a, s = closed_form_alpha_sigma(proc, t)
    x_t = a[:, None] * x0 + s[:, None] * noise
    with torch.no_grad():
        out = model(x_t, (t * proc.timestep_scale).float())
    x0_hat = convert_prediction(out, x_t, a[:, None], s[:, None], prediction, "x0")
    snr = a**2 / s**2
    assert (snr < gamma).any() and (snr > gamma).any()  # both sides of the clip
    expected = snr.clamp(max=gamma) * ((x0_hat - x0) ** 2).mean(1)
    assert torch.allclose(per.double(), expected, rtol=1e-5)


@pytest.mark.parametrize("cls", [VPSDE, VESDE, FlowMatching, EDM])
def test_weightings_by_name_and_callable(cls, gen):
    proc = cls()
    t = times(proc, 8, gen)
    assert torch.equal(proc.loss_weight(t, "uniform"), torch.ones(8))
    snr = proc.snr(t)
    assert torch.allclose(proc.loss_weight(t, lambda s: s.sqrt()), snr.sqrt().float())
    with pytest.raises(ValueError, match=r"one weight per sample"):
        proc.loss_weight(t, lambda s: s[:2])
    with pytest.raises(ValueError, match=r"unknown weighting 'snr'"):
        proc.loss_weight(t, "snr")
    with pytest.raises(ValueError, match=r"gamma must be > 0"):
        proc.loss_weight(t, "min_snr_0")


@pytest.mark.parametrize("proc", [VPSDE(), VESDE(), FlowMatching()], ids=lambda p: type(p).__name__)
def test_check_t_names_the_problem(proc):
    x0 = torch.zeros(4, 2)
    lo, hi = proc.time_range()
    with pytest.raises(TypeError, match=r"t must be a torch tensor of shape \[B\], got list"):
        proc.q_sample(x0, [0.5] * 4)
    with pytest.raises(ValueError, match=r"t must have shape \[B\] matching x0's batch size"):
        proc.q_sample(x0, torch.full((4, 1), 0.5))
    with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
        proc.q_sample(x0, torch.full((3,), 0.5))
    with pytest.raises(TypeError, match=r"t must be a float tensor: .* runs in continuous time"):
        proc.q_sample(x0, torch.zeros(4, dtype=torch.long))
    for bad in (hi + 0.5, lo - 0.5, math.nan):
        with pytest.raises(ValueError, match=r"t must lie in \[" + f"{lo:g}, {hi:g}" + r"\]"):
            proc.q_sample(x0, torch.full((4,), bad))
    # the ends themselves are times of the process
    proc.q_sample(x0, torch.tensor([lo, hi, lo, hi]))


def test_edm_check_t_refuses_nonpositive_noise_levels():
    proc = EDM()
    with pytest.raises(ValueError, match=r"EDM's t is the noise level sigma and must be > 0"):
        proc.q_sample(torch.zeros(2, 2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"t must lie in"):
        proc.q_sample(torch.zeros(2, 2), torch.tensor([-1.0, 1.0]))


def test_the_registry_builds_each_process_and_names_bad_input():
    assert isinstance(dl.processes.build("vp", beta_max=10.0), VPSDE)
    assert isinstance(dl.processes.build("flow", coupling="ot"), FlowMatching)
    with pytest.raises(ValueError, match=r"unknown process 'vpsde'; choose one of ddpm, vp, ve, edm, flow"):
        dl.processes.build("vpsde")
    with pytest.raises(TypeError, match=r"process 've' \(VESDE\) cannot take"):
        dl.processes.build("ve", beta_min=0.1)
