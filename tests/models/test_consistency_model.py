"""A consistency model's boundary parameterisation (difflab.models.consistency) and the guidance
scale as a network input (difflab.models.embeddings.GuidanceEmbedding, ``guidance_embed=True``).

f(x, sigma) = c_skip x + c_out D(x, sigma) in the VE form x = x_t / a, with
c_skip = sigma_b^2 / ((sigma - sigma_min)^2 + sigma_b^2) and c_out = 1 - c_skip, so that
f(x, sigma_min) = x for any weights; the model returns its process's prediction type."""

import math

import pytest
import torch
from networks import perturb

import difflab as dl
from difflab.models import (
    ConsistencyModel,
    EDMPrecond,
    GuidanceEmbedding,
    MLPDenoiser,
    TimestepEmbedding,
)
from difflab.models.consistency import consistency_coefficients
from difflab.models.unet import UNet
from difflab.processes import convert_prediction

MU = torch.tensor([0.7, -1.2, 0.3], dtype=torch.float64)  # Gaussian data N(MU, S^2 I), 3-D
S = 0.6


def make_process(kind: str, prediction: str):
    if kind == "ddpm":
        return dl.GaussianDiffusion(dl.schedules.cosine(1000), prediction=prediction)
    if kind == "vp":
        return dl.processes.VPSDE(prediction=prediction)
    if kind == "ve":
        return dl.processes.VESDE(sigma_max=20.0, prediction=prediction)
    if kind == "flow":
        return dl.processes.FlowMatching(prediction=prediction)
    assert kind == "edm" and prediction == "x0"
    return dl.processes.EDM()


def random_net(kind: str) -> torch.nn.Module:
    """A network of random weights (the zero-initialised output layer too), float64; under EDM in
    EDM's preconditioning."""
    torch.manual_seed(0)
    net = perturb(MLPDenoiser(dim=3, width=16, depth=2), scale=0.3).double()
    return EDMPrecond(net) if kind == "edm" else net


def time_input(proc, sigma: float, batch: int) -> torch.Tensor:
    """What a sampler gives the network at noise level sigma (a long timestep on the DDPM grid)."""
    return proc.timestep(sigma, batch)


def read_as_x0(proc, out, x_t, t):
    """The model's output as the process reads it: its x0 estimate (in the process's own state)."""
    sigma = proc.sigma_of_timestep(t).view(-1, 1)
    a = torch.as_tensor(proc.scale(sigma), dtype=torch.float64)
    return convert_prediction(out, x_t, a, a * sigma, proc.prediction, "x0"), sigma, a


# every process with the prediction types a student takes (x0) or a trained network keeps (eps),
# around networks of each output type
BOUNDARY_CASES = [(kind, proc_pred, net_pred) for kind in ("ddpm", "vp", "ve", "flow")
                  for proc_pred in ("x0", "eps") for net_pred in ("eps", "v", "x0")] + [("edm", "x0", "x0")]


@pytest.mark.parametrize("kind, proc_pred, net_pred", BOUNDARY_CASES)
def test_boundary_condition_holds_for_random_weights(kind, proc_pred, net_pred):
    proc = make_process(kind, proc_pred)
    boundary = {"ddpm": proc.sigma_min, "vp": 0.3, "ve": 0.5, "flow": 0.2, "edm": 0.5}[kind]  # a student's, Song's
    model = ConsistencyModel(random_net(kind), proc, boundary=boundary, net_prediction=net_pred)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    t = time_input(proc, proc.sigma_min, 6)
    a = float(proc.scale(proc.sigma_min))
    x_t = a * x
    with torch.no_grad():
        out = model(x_t, t)
    assert out.dtype == torch.float64 and out.shape == x_t.shape
    x0, _, a_read = read_as_x0(proc, out, x_t, t)
    # f(x, sigma_min) = x: read as x0, the output is the state itself in the VE form
    torch.testing.assert_close(x0, x_t / a_read, rtol=1e-12, atol=1e-12)
    if proc_pred == "x0":  # f itself, with no conversion: to rounding (c_out = 1 - c_skip may be 1e-16, not 0)
        torch.testing.assert_close(out, x_t / a_read, rtol=1e-14, atol=1e-15)
    # ... while above the boundary region the network's estimate takes over (the test can fail)
    t_hi = time_input(proc, min(2.0, 0.5 * proc.sigma_max), 6)
    a_hi = float(proc.scale(float(proc.sigma_of_timestep(t_hi[:1]))))
    with torch.no_grad():
        out_hi = model(a_hi * x, t_hi)
    x0_hi, _, _ = read_as_x0(proc, out_hi, a_hi * x, t_hi)
    assert (x0_hi - x).abs().max() > 1e-2


def test_coefficients_are_the_formula():
    sigma_min, sb = 0.002, 0.3
    sigma = torch.tensor([0.002, 0.01, 0.302, 1.0, 80.0], dtype=torch.float64)
    c_skip, c_out = consistency_coefficients(sigma, sigma_min, sb)
    expected = [sb**2 / ((s - sigma_min) ** 2 + sb**2) for s in sigma.tolist()]
    torch.testing.assert_close(c_skip, torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=0)
    torch.testing.assert_close(c_out, 1 - c_skip, rtol=0, atol=0)
    # at sigma_min: 1 and 0 up to the last bit (torch divides a number by a tensor as a product with
    # the reciprocal, 0.09 * (1 / 0.09) = 1 - 1.1e-16)
    assert abs(float(c_skip[0]) - 1) <= 2.3e-16 and abs(float(c_out[0])) <= 2.3e-16
    assert float(c_skip[2]) == pytest.approx(0.5, rel=1e-12)  # sigma - sigma_min = sigma_b: half and half
    assert float(c_skip[4]) == pytest.approx(sb**2 / (80 - sigma_min) ** 2, rel=1e-4)  # vanishes as sigma_b^2/sigma^2
    assert (c_skip[1:] < c_skip[:-1]).all()


def test_model_keeps_its_settings():
    proc = dl.GaussianDiffusion(dl.schedules.linear(100), prediction="x0")
    model = ConsistencyModel(MLPDenoiser(dim=3, width=8, depth=1), proc, boundary=0.1)
    assert model.net_prediction == "x0"  # default: the process's
    assert model.sigma_min == proc.sigma_min and model.boundary == 0.1
    assert model.num_classes is None and model.guidance_input is False
    model = ConsistencyModel(MLPDenoiser(dim=3, width=8, depth=1, num_classes=4), proc, net_prediction="eps")
    assert model.net_prediction == "eps" and model.num_classes == 4


def conversion_cases():
    for kind, preds in (("ddpm", ("eps", "v", "x0")), ("vp", ("eps", "v", "x0")), ("ve", ("eps", "v", "x0")),
                        ("flow", ("velocity", "eps", "v", "x0")), ("edm", ("x0",))):
        for net_pred in preds:
            for proc_pred in (("x0", "eps") if kind != "edm" else ("x0",)):
                yield kind, net_pred, proc_pred


@pytest.mark.parametrize("kind, net_pred, proc_pred", list(conversion_cases()))
def test_exact_denoiser_inside_gives_c_skip_x_plus_c_out_d(kind, net_pred, proc_pred):
    """A network whose output is the exact denoiser of Gaussian data (of its own prediction type),
    wrapped with a narrow boundary: the output, read by the process as x0, is c_skip x + c_out D with
    D = mu + s^2 / (s^2 + sigma^2) (x - mu), at every level (c_skip from 1 to ~0 across them)."""
    proc = make_process(kind, proc_pred)
    net = dl.models.GaussianDenoiser(make_process(kind, net_pred), MU, S)
    sb = 0.05
    model = ConsistencyModel(net, proc, boundary=sb, net_prediction=net_pred)
    smin = proc.sigma_min
    levels = [smin, smin + sb / 3, smin + sb, smin + 4 * sb, 1.0, min(7.0, 0.9 * proc.sigma_max)]
    g = torch.Generator().manual_seed(1)
    c_skips = []
    for level in levels:
        t = time_input(proc, level, 5)
        sigma = float(proc.sigma_of_timestep(t[:1]))  # the level the time input stands for
        a = float(proc.scale(sigma))
        x = MU + math.sqrt(S**2 + sigma**2) * torch.randn(5, 3, generator=g, dtype=torch.float64)
        with torch.no_grad():
            out = model(a * x, t)
        x0, _, _ = read_as_x0(proc, out, a * x, t)
        c_skip = sb**2 / ((sigma - smin) ** 2 + sb**2)
        d = MU + S**2 / (S**2 + sigma**2) * (x - MU)
        torch.testing.assert_close(x0, c_skip * x + (1 - c_skip) * d, rtol=1e-9, atol=1e-9)
        c_skips.append(c_skip)
    assert c_skips[0] == 1.0 and c_skips[-1] < 1e-3 and 0.2 < c_skips[2] < 0.8  # both terms were tested


@pytest.mark.parametrize("boundary", [0, -0.5, math.nan, math.inf, "0.5", None])
def test_bad_boundary_is_refused(boundary):
    proc = dl.processes.EDM()
    with pytest.raises(ValueError, match="boundary"):
        ConsistencyModel(MLPDenoiser(dim=3, width=8, depth=1), proc, boundary=boundary)


def test_bad_net_prediction_and_process_are_refused():
    net = MLPDenoiser(dim=3, width=8, depth=1)
    with pytest.raises(ValueError, match="net_prediction.*eps.*x0.*v"):
        ConsistencyModel(net, dl.processes.EDM(), net_prediction="noise")
    with pytest.raises(TypeError, match="process"):
        ConsistencyModel(net, "edm")


# ---------------------------------------------------------------- the guidance scale as an input

def test_guidance_embedding_is_the_time_embedding_of_100_w_and_starts_at_zero():
    emb = GuidanceEmbedding(8)
    x = torch.zeros(3, 2)
    w = torch.tensor([0.0, 1.5, 7.0])
    assert torch.equal(emb(w, x), torch.zeros(3, 8))  # zero-initialised last layer: no signal yet
    perturb(emb, scale=0.5)
    plain = TimestepEmbedding(8)
    plain.load_state_dict(emb.state_dict())
    torch.testing.assert_close(emb(w, x), plain(100 * w), rtol=0, atol=0)
    torch.testing.assert_close(emb(2.5, x), plain(torch.full((3,), 250.0)), rtol=0, atol=0)
    torch.testing.assert_close(emb(None, x), plain(torch.full((3,), 100.0)), rtol=0, atol=0)  # None: w = 1
    assert not torch.allclose(emb(1.0, x), emb(3.0, x))


def mlp(**kw):
    return MLPDenoiser(dim=2, width=16, depth=2, num_classes=3, **kw)


def unet(**kw):
    return UNet(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4,
                attention_levels=None, num_classes=3, **kw)


@pytest.mark.parametrize("build, shape", [(mlp, (4, 2)), (unet, (4, 1, 8, 8))], ids=["mlp", "unet"])
def test_guidance_input_computes_what_the_network_without_it_computes(build, shape):
    torch.manual_seed(0)
    plain = perturb(build(), scale=0.2)
    guided = build(guidance_embed=True)
    missing, unexpected = guided.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("guidance_embed.") for k in missing)
    assert guided.guidance_input and not plain.guidance_input
    g = torch.Generator().manual_seed(0)
    x, t, cond = torch.randn(shape, generator=g), torch.tensor([3, 250, 999, 40]), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        want = plain(x, t, cond)
        for w in (None, 0.0, 1.0, 2.5, 10.0, torch.tensor([0.0, 1.0, 2.0, 3.0])):
            torch.testing.assert_close(guided(x, t, cond, guidance=w), want, rtol=0, atol=0)
        # once the embedding's last layer has weights, w changes what the network computes
        perturb(guided.guidance_embed, scale=0.5)
        at_1, at_3 = guided(x, t, cond, guidance=1.0), guided(x, t, cond, guidance=3.0)
    assert (at_1 - at_3).abs().max() > 1e-4 and (at_1 - want).abs().max() > 1e-4


@pytest.mark.parametrize("build, shape", [(mlp, (2, 2)), (unet, (2, 1, 8, 8))], ids=["mlp", "unet"])
def test_network_without_guidance_input_refuses_a_guidance_scale(build, shape):
    net = build()
    with pytest.raises(ValueError, match="guidance_embed=True"):
        net(torch.zeros(shape), torch.tensor([1, 2]), torch.tensor([0, 1]), guidance=2.0)


def test_guidance_embed_needs_labels_and_a_boolean():
    with pytest.raises(ValueError, match="num_classes"):
        MLPDenoiser(dim=2, width=16, depth=1, guidance_embed=True)
    with pytest.raises(ValueError, match="num_classes"):
        UNet(in_channels=1, channels=8, channel_mult=(1,), num_res_blocks=1, norm_groups=4,
             attention_levels=None, guidance_embed=True)
    with pytest.raises(ValueError, match="true or false"):
        mlp(guidance_embed="yes")
    with pytest.raises(ValueError, match="true or false"):
        unet(guidance_embed=1)


def test_guidance_passes_through_edm_preconditioning_and_the_consistency_model():
    torch.manual_seed(0)
    net = mlp(guidance_embed=True).double()
    perturb(net, scale=0.3)  # the embedding's last layer too: the output depends on w
    precond = EDMPrecond(net)
    proc = dl.processes.EDM()
    model = ConsistencyModel(precond, proc, boundary=0.5)
    assert precond.guidance_input and model.guidance_input and model.num_classes == 3
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 2, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.5, 3.0, 40.0], dtype=torch.float64)
    cond, w = torch.tensor([0, 1, 2, 1]), torch.tensor([1.0, 2.0, 3.0, 0.5])
    with torch.no_grad():
        c_skip, c_out, c_in, _ = precond.coefficients(sigma[:, None])
        d = c_skip * x + c_out * net(c_in * x, 250 * sigma.log(), cond, guidance=w)
        torch.testing.assert_close(precond(x, sigma, cond, guidance=w), d, rtol=1e-12, atol=1e-12)
        k_skip, k_out = consistency_coefficients(sigma[:, None], proc.sigma_min, 0.5)
        torch.testing.assert_close(model(x, sigma, cond, guidance=w), k_skip * x + k_out * d, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(model(x, sigma, cond, guidance=1.0), model(x, sigma, cond, guidance=3.0))
