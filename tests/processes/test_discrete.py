import numpy as np
import pytest
import torch

import difflab as dl

SCHEDULES = ["linear", "cosine", "sqrt", "sigmoid"]


def make(name="linear", T=1000, prediction="eps"):
    return dl.GaussianDiffusion(dl.schedules.get(name, T=T), prediction=prediction)


def test_q_sample_is_the_closed_form_and_has_the_right_moments(gen):
    proc = make("cosine")
    x0 = torch.randn(8, 3, dtype=torch.float64, generator=gen)
    noise = torch.randn(8, 3, dtype=torch.float64, generator=gen)
    t = torch.tensor([0, 1, 10, 100, 500, 998, 999, 42])
    abar = proc.alphas_cumprod[t][:, None]
    assert torch.allclose(proc.q_sample(x0, t, noise), abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    # moments over many draws
    x0 = torch.full((200_000, 1), 2.0)
    t = torch.full((200_000,), 300)
    xt = proc.q_sample(x0, t)
    abar = proc.alphas_cumprod[300].item()
    assert xt.mean().item() == pytest.approx(2 * abar**0.5, abs=5 * (1 - abar) ** 0.5 / 200_000**0.5)
    assert xt.var().item() == pytest.approx(1 - abar, rel=0.02)


def _brute_force_posterior(abar_prev, beta):
    """q(x_{t-1} | x_t, x0) by conditioning the joint Gaussian of (x_{t-1}, x_t) given x0 (scalar case).

    x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) e1,  x_t = sqrt(1 - beta) x_{t-1} + sqrt(beta) e2.
    Returns (a, b, v) with E = a x0 + b x_t and Var = v, from the Schur complement.
    """
    alpha = 1 - beta
    # x = (x_{t-1}, x_t) = M x0 + L (e1, e2)
    M = np.array([np.sqrt(abar_prev), np.sqrt(alpha * abar_prev)])
    L = np.array([[np.sqrt(1 - abar_prev), 0.0], [np.sqrt(alpha) * np.sqrt(1 - abar_prev), np.sqrt(beta)]])
    S = L @ L.T
    gain = S[0, 1] / S[1, 1]
    # E[x_{t-1} | x_t] = M0 x0 + gain (x_t - M1 x0)
    return M[0] - gain * M[1], gain, S[0, 0] - gain * S[0, 1]


@pytest.mark.parametrize("name", SCHEDULES)
def test_q_posterior_matches_brute_force_gaussian_conditioning(name, gen):
    proc = make(name, T=200)
    ts = torch.tensor([0, 1, 2, 57, 120, 198, 199])
    x0 = torch.randn(len(ts), 1, dtype=torch.float64, generator=gen)
    xt = torch.randn(len(ts), 1, dtype=torch.float64, generator=gen)
    mean, var, log_var = proc.q_posterior(x0, xt, ts)
    for i, t in enumerate(ts.tolist()):
        abar_prev = 1.0 if t == 0 else proc.alphas_cumprod[t - 1].item()
        a, b, v = _brute_force_posterior(abar_prev, proc.betas[t].item())
        assert mean[i, 0].item() == pytest.approx(a * x0[i, 0].item() + b * xt[i, 0].item(), rel=1e-10, abs=1e-12)
        assert var[i, 0].item() == pytest.approx(v, rel=1e-9, abs=1e-15)
        # the log variance is clipped at t = 0, where the posterior is a point mass
        expected_log = np.log(v) if t > 0 else np.log(proc.posterior_variance[1].item())
        assert log_var[i, 0].item() == pytest.approx(expected_log, rel=1e-9)
    # at t = 0 the posterior mean is x0 itself
    assert mean[0, 0].item() == pytest.approx(x0[0, 0].item(), abs=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_prediction_conversions_round_trip_in_float64(name, prediction, gen):
    proc = make(name, T=1000, prediction=prediction)
    t = torch.arange(proc.T)
    x0 = torch.randn(proc.T, 4, dtype=torch.float64, generator=gen)
    eps = torch.randn(proc.T, 4, dtype=torch.float64, generator=gen)
    xt = proc.q_sample(x0, t, eps)
    a = proc.alphas_cumprod[:, None].sqrt()
    s = (1 - proc.alphas_cumprod[:, None]).sqrt()
    v = a * eps - s * x0
    out = {"eps": eps, "x0": x0, "v": v}[prediction]
    assert torch.allclose(proc.target(x0, eps, t), out, rtol=0, atol=1e-15)
    # Float64 precision, scaled by the conditioning of each conversion: recovering x0 from eps
    # divides by sqrt(abar_t) (~6e-3 at t = T), recovering eps from x0 by sqrt(1 - abar_t) (~1e-2 at t = 1).
    cond = (1 / a).clamp(min=1) * (1 / s).clamp(min=1)
    tol = 1e-13 * cond
    assert ((proc.predict_x0(xt, t, out) - x0).abs() <= tol).all()
    assert ((proc.predict_eps(xt, t, out) - eps).abs() <= tol).all()
    assert ((proc.predict_v(xt, t, out) - v).abs() <= tol).all()


def test_v_is_rotation_of_eps_and_x0(gen):
    proc = make("cosine", prediction="v")
    t = torch.randint(0, 1000, (64,), generator=gen)
    x0 = torch.randn(64, 3, dtype=torch.float64, generator=gen)
    eps = torch.randn(64, 3, dtype=torch.float64, generator=gen)
    xt = proc.q_sample(x0, t, eps)
    v = proc.target(x0, eps, t)
    # |x_t|^2 + |v|^2 = |x0|^2 + |eps|^2 (an orthogonal rotation of (x0, eps))
    assert torch.allclose(xt.pow(2) + v.pow(2), x0.pow(2) + eps.pow(2))


class Affine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x, t, cond=None):
        return self.w * x + 1e-3 * t.float()[:, None]


def test_training_loss_uniform_is_plain_mse_on_the_target(gen):
    for prediction in ["eps", "x0", "v"]:
        proc = make("linear", prediction=prediction)
        model = Affine()
        x0 = torch.randn(32, 2, generator=gen)
        t = torch.randint(0, 1000, (32,), generator=gen)
        noise = torch.randn(32, 2, generator=gen)
        loss = proc.training_loss(model, x0, t=t, noise=noise)
        xt = proc.q_sample(x0, t, noise)
        expected = ((model(xt, t) - proc.target(x0, noise, t)) ** 2).mean()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        loss.backward()
        assert model.w.grad is not None and model.w.grad.abs() > 0


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weighting_equals_min_snr_times_x0_error(prediction, gen):
    """Min-SNR-gamma weights the x0 error by min(SNR, gamma) whatever the prediction type."""
    proc = make("cosine", prediction=prediction)
    model = Affine()
    x0 = torch.randn(64, 2, dtype=torch.float64, generator=gen)
    t = torch.randint(0, 1000, (64,), generator=gen)
    noise = torch.randn(64, 2, dtype=torch.float64, generator=gen)
    model.double()
    per = proc.training_loss(model, x0, t=t, noise=noise, weighting="min_snr_5", reduction="none")
    xt = proc.q_sample(x0, t, noise)
    x0_hat = proc.predict_x0(xt, t, model(xt, t))
    snr = proc.alphas_cumprod[t] / (1 - proc.alphas_cumprod[t])
    expected = snr.clamp(max=5.0) * ((x0_hat - x0) ** 2).mean(1)
    assert torch.allclose(per.double(), expected, rtol=1e-5)
    # a callable weighting gets SNR(t)
    per2 = proc.training_loss(model, x0, t=t, noise=noise, weighting=lambda s: s * 0 + 2.0, reduction="none")
    per1 = proc.training_loss(model, x0, t=t, noise=noise, reduction="none")
    assert torch.allclose(per2, 2 * per1)


def test_label_dropout_uses_the_null_label():
    seen = []

    class Spy(torch.nn.Module):
        num_classes = 10

        def forward(self, x, t, cond):
            seen.append(cond.clone())
            return torch.zeros_like(x)

    proc = make("linear", T=100)
    labels = torch.arange(10).repeat(100)
    proc.training_loss(Spy(), torch.zeros(1000, 2), labels, cond_drop_prob=1.0)
    assert (seen[-1] == 10).all()
    proc.training_loss(Spy(), torch.zeros(1000, 2), labels, cond_drop_prob=0.0)
    assert torch.equal(seen[-1], labels)
    proc.training_loss(Spy(), torch.zeros(1000, 2), labels, cond_drop_prob=0.3, generator=torch.Generator().manual_seed(0))
    frac = (seen[-1] == 10).float().mean().item()
    assert abs(frac - 0.3) < 5 * (0.3 * 0.7 / 1000) ** 0.5


def test_caption_dropout_empties_whole_captions():
    """A text model's condition is token ids [B, L]; dropout replaces a whole row by the empty
    caption (its null_cond, padding), never single words."""
    seen = []

    class Tokenizer:
        max_length, vocab_size = 4, 9

    class Spy(torch.nn.Module):
        tokenizer, null_cond = Tokenizer(), 0

        def forward(self, x, t, cond):
            seen.append(cond.clone())
            return torch.zeros_like(x)

    proc = make("linear", T=100)
    ids = torch.randint(1, 10, (1000, 4), generator=torch.Generator().manual_seed(1))
    proc.training_loss(Spy(), torch.zeros(1000, 2), ids, cond_drop_prob=0.3, generator=torch.Generator().manual_seed(0))
    empty = (seen[-1] == 0).all(1)
    assert torch.equal(seen[-1][~empty], ids[~empty])  # kept rows whole
    assert ((seen[-1] == 0).any(1) == empty).all()  # no row partly emptied
    assert abs(empty.float().mean().item() - 0.3) < 5 * (0.3 * 0.7 / 1000) ** 0.5
    with pytest.raises(ValueError, match=r"token ids, an integer tensor \[1000, 4\]"):
        proc.training_loss(Spy(), torch.zeros(1000, 2), ids[:, :3])


def test_sigma_and_t_are_inverse_and_continuous():
    proc = make("cosine")
    t = torch.arange(1000)
    assert torch.allclose(proc.sigma_of(t), ((1 - proc.alphas_cumprod) / proc.alphas_cumprod).sqrt())
    assert torch.allclose(proc.t_of(proc.sigma_of(t)), t.double(), atol=1e-9)
    tf = torch.linspace(0, 999, 3001, dtype=torch.float64)
    sig = proc.sigma_of(tf)
    assert (sig.diff() > 0).all()
    assert torch.allclose(proc.t_of(sig), tf, atol=1e-8)
    # float t on the grid agrees with integer t
    assert torch.allclose(proc.sigma_of(t.double()), proc.sigma_of(t))


def test_the_old_module_name_still_imports():
    """difflab.diffusion (the process's module before difflab.processes) names the same objects."""
    import difflab.diffusion as old
    from difflab.diffusion import GaussianDiffusion, discretized_gaussian_log_likelihood

    assert GaussianDiffusion is dl.GaussianDiffusion and old is dl.processes
    assert discretized_gaussian_log_likelihood is dl.processes.discretized_gaussian_log_likelihood
