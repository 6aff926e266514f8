"""The denoiser every sampler calls (difflab.samplers.denoiser): classifier-free guidance (one
batched pass of 2B per evaluation, checked on the conditional Gaussian mixture, whose guided
denoiser is known exactly), x0 clipping and Imagen's dynamic thresholding, on every sampler."""

import pytest
import torch

import difflab as dl
from networks import tiny_text_model

FAST = ["dpmpp_2m", "dpmpp_3m", "euler", "heun"]
ALL = ["ddpm", "ddim"] + FAST
MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
S = 0.5
# the three-mode mixture of the guidance test on DDIM (exact conditional mixture)
MIX_MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
MIX_WEIGHTS = torch.tensor([0.2, 0.3, 0.5])
MIX_STD = 0.3
# the mixture of the guidance tests on every sampler
MEANS = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
WEIGHTS = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)


def test_classifier_free_guidance_on_exact_conditional_mixture(proc):
    model = dl.models.GaussianMixtureDenoiser(proc, MIX_MEANS, MIX_STD, MIX_WEIGHTS, conditional=True)
    n = 3000
    labels = torch.full((n,), 2)
    x = dl.sample(model, proc, (n, 2), "ddim", 50, cond=labels, guidance=1.0, generator=torch.Generator().manual_seed(0))
    assert (torch.cdist(x, MIX_MEANS).argmin(1) == 2).float().mean() > 0.999
    # guidance 0: the unconditional model, whatever the labels
    x = dl.sample(model, proc, (n, 2), "ddim", 50, cond=labels, guidance=0.0, generator=torch.Generator().manual_seed(0))
    frac = torch.bincount(torch.cdist(x, MIX_MEANS).argmin(1), minlength=3).float() / n
    assert ((frac - MIX_WEIGHTS).abs() < 5 * (MIX_WEIGHTS * (1 - MIX_WEIGHTS) / n).sqrt()).all()
    # guidance > 1 sharpens towards the class: the within-mode spread shrinks
    x3 = dl.sample(model, proc, (n, 2), "ddim", 50, cond=labels, guidance=3.0, generator=torch.Generator().manual_seed(0))
    assert (torch.cdist(x3, MIX_MEANS).argmin(1) == 2).all()
    assert x3.std(0).mean() < x.new_tensor(MIX_STD) * 0.95


def test_guidance_is_one_batched_call_per_step(proc):
    calls = []

    class Spy(torch.nn.Module):
        num_classes = 3

        def forward(self, x, t, cond):
            calls.append((x.shape[0], cond.clone()))
            return torch.zeros_like(x)

    dl.sample(Spy(), proc, (4, 2), "ddim", 7, cond=torch.tensor([0, 1, 2, 0]), guidance=2.0)
    assert len(calls) == 7
    assert all(b == 8 for b, _ in calls)
    assert torch.equal(calls[0][1], torch.tensor([0, 1, 2, 0, 3, 3, 3, 3]))
    calls.clear()
    dl.sample(Spy(), proc, (4, 2), "ddpm", 9, cond=torch.tensor([0, 1, 2, 0]))
    assert len(calls) == 9 and all(b == 4 for b, _ in calls)


class Counting(torch.nn.Module):
    """The model, counting forward passes and their batch sizes."""

    def __init__(self, model):
        super().__init__()
        self.model, self.num_classes, self.batches = model, model.num_classes, []

    def forward(self, x_t, t, cond=None):
        self.batches.append(len(x_t))
        return self.model(x_t, t, cond)


def mixture(proc):
    return dl.models.GaussianMixtureDenoiser(proc, MEANS, 0.3, WEIGHTS, conditional=True)


def nearest(x):
    return torch.cdist(x.double(), MEANS).argmin(1)


def expected_calls(sampler, steps):
    return 2 * steps - 1 if sampler == "heun" else steps


@pytest.mark.parametrize("sampler", ALL)
def test_guidance_one_samples_the_requested_component(proc, sampler):
    n, steps = 600, 20
    model = Counting(mixture(proc))
    cond = torch.arange(n) % 3
    x = dl.sample(model, proc, (n, 2), sampler, steps=steps, cond=cond, generator=torch.Generator().manual_seed(2))
    assert (nearest(x) == cond).all()
    for k in range(3):
        assert torch.allclose(x[cond == k].mean(0).double(), MEANS[k], atol=0.1)
    # one forward pass of size B per evaluation; Heun evaluates twice per step but on the last
    assert model.batches == [n] * expected_calls(sampler, steps)


@pytest.mark.parametrize("sampler", ALL)
def test_guidance_zero_samples_the_unconditional_mixture(proc, sampler):
    n, steps = 3000, 20
    model = Counting(mixture(proc))
    cond = torch.zeros(n, dtype=torch.long)  # ignored at guidance 0: only the null label is used
    x = dl.sample(model, proc, (n, 2), sampler, steps=steps, cond=cond, guidance=0.0,
                  generator=torch.Generator().manual_seed(3))
    share = torch.bincount(nearest(x), minlength=3).double() / n
    se = (WEIGHTS * (1 - WEIGHTS) / n).sqrt()
    assert ((share - WEIGHTS).abs() < 5 * se).all(), share
    assert model.batches == [n] * expected_calls(sampler, steps)


class PreGuided(torch.nn.Module):
    """eps_uncond + w (eps_cond - eps_uncond) computed in one call: the guided model, by hand."""

    def __init__(self, model, w):
        super().__init__()
        self.model, self.w = model, w

    def forward(self, x_t, t, cond=None):
        null = torch.full_like(cond, self.model.num_classes)
        e_c, e_u = self.model(x_t, t, cond), self.model(x_t, t, null)
        return e_u + self.w * (e_c - e_u)


@pytest.mark.parametrize("sampler", ALL)
def test_guidance_is_one_batched_pass_of_2b(proc, sampler):
    n, steps, w = 64, 8, 3.0
    model = Counting(mixture(proc))
    cond = torch.arange(n) % 3
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(4))
    kw = dict(steps=steps, noise=noise)
    x = dl.sample(
        model,
        proc,
        (n, 2),
        sampler,
        cond=cond,
        guidance=w,
        generator=torch.Generator().manual_seed(5),
        **kw,
    )
    assert model.batches == [2 * n] * expected_calls(sampler, steps)
    ref = dl.sample(
        PreGuided(model.model, w),
        proc,
        (n, 2),
        sampler,
        cond=cond,
        generator=torch.Generator().manual_seed(5),
        **kw,
    )
    assert torch.allclose(x, ref, atol=1e-5)


@pytest.mark.parametrize("sampler", FAST)
def test_guidance_needs_a_conditional_model(proc, sampler):
    model = dl.models.GaussianDenoiser(proc, MU, S)
    with pytest.raises(ValueError, match="class-conditional"):
        dl.sample(
            model,
            proc,
            (4, 2),
            sampler,
            steps=5,
            guidance=2.0,
            cond=torch.zeros(4, dtype=torch.long),
        )


@pytest.mark.parametrize("sampler", ALL)
def test_clip_and_dynamic_threshold_bound_the_samples(proc, sampler):
    """Every sampler ends on the clipped x0 estimate: |x| <= c, and <= 1 with dynamic thresholding."""
    model = dl.models.GaussianMixtureDenoiser(proc, MEANS, 0.3)
    g = torch.Generator().manual_seed(6)
    x = dl.sample(model, proc, (200, 2), sampler, steps=10, clip_x0=0.5, generator=g)
    assert x.abs().max() <= 0.5 + 1e-6
    free = dl.sample(
        model, proc, (200, 2), sampler, steps=10, generator=torch.Generator().manual_seed(6)
    )
    assert free.abs().max() > 2  # the unclipped samples do leave the box
    x = dl.sample(model, proc, (200, 2), sampler, steps=10, dynamic_threshold=0.9, generator=g)
    assert x.abs().max() <= 1 + 1e-6


def test_dynamic_threshold_is_imagens_rule():
    """s = max(1, quantile_p |x0|) per sample, x0 <- clamp(x0, -s, s) / s (Saharia et al. 2022,
    sec. 2.3), on a network whose x0 is known: the bound alone (|x| <= 1) also held for a plain
    clamp to [-1, 1], which moved samples by up to 0.25."""
    from difflab.samplers.denoiser import Denoiser

    proc = dl.GaussianDiffusion(dl.schedules.linear(100), prediction="x0")
    x0 = torch.tensor([[0.5, -3.0, 2.0, 1.5], [0.2, 0.4, -0.6, 0.8]])  # a sample above 1, one within
    den = Denoiser(lambda x, t: x0, proc, dynamic_threshold=0.5)
    got = den(torch.zeros(2, 4), 1.0)
    s = torch.quantile(x0.abs(), 0.5, dim=1).clamp(min=1.0)[:, None]  # 1.75 and 1 (0.6 < 1)
    torch.testing.assert_close(got, torch.maximum(torch.minimum(x0, s), -s) / s)
    assert got[0].tolist() == pytest.approx([0.5 / 1.75, -1.0, 1.0, 1.5 / 1.75])  # not a clamp to [-1, 1]
    torch.testing.assert_close(got[1], x0[1])  # within [-1, 1]: unchanged


def test_a_network_of_one_process_is_refused_under_another_by_every_caller():
    """The check sits in the Denoiser, so inpainting and the likelihood (which build one directly)
    refuse a network trained under another process as dl.sample does."""
    import difflab as dl
    from difflab.evaluation import log_likelihood
    from difflab.samplers.denoiser import Denoiser

    flow = dl.processes.FlowMatching()
    model = dl.models.GaussianMixtureDenoiser(flow, torch.zeros(1, 2), 0.5)
    model.trained_process = flow
    chain = dl.GaussianDiffusion(dl.schedules.linear(100))
    x = torch.zeros(3, 2)
    calls = {
        "denoiser": lambda: Denoiser(model, chain),
        "inpaint": lambda: dl.editing.inpaint(model, chain, x, torch.ones(3, 2), "ddim", 5),
        "likelihood": lambda: log_likelihood(model, chain, x, steps=2),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"trained under FlowMatching.*sampled under GaussianDiffusion"):
            call()
    Denoiser(model, dl.processes.FlowMatching())  # a process built alike is the same process


def test_another_sampling_range_of_the_same_process_is_not_another_process():
    """What a network learnt is its kind, prediction and time map: EDM's sigma range, a flow's
    [t_min, t_max] or the VP SDE's t_min only choose where sampling runs, and may change."""
    import difflab as dl
    from difflab.samplers.denoiser import Denoiser

    P = dl.processes
    same = [(P.EDM(), P.EDM(sigma_max=160.0, sigma_min=0.01, sigma_data=1.0)),
            (P.FlowMatching(), P.FlowMatching(t_min=1e-4, t_max=0.99, coupling="ot")),
            (P.VPSDE(), P.VPSDE(t_min=1e-5))]
    other = [(P.VPSDE(), P.VPSDE(beta_max=10.0)), (P.VESDE(), P.VESDE(sigma_max=20.0)),
             (P.FlowMatching(), P.FlowMatching(prediction="eps")),
             (dl.GaussianDiffusion(dl.schedules.linear(100)), dl.GaussianDiffusion(dl.schedules.cosine(100)))]
    for trained, sampled in same + other:
        model = dl.models.GaussianMixtureDenoiser(trained, torch.zeros(1, 2), 0.5)
        model.trained_process = trained
        if (trained, sampled) in same:
            Denoiser(model, sampled)
        else:
            with pytest.raises(ValueError, match="trained under"):
                Denoiser(model, sampled)


def test_under_guidance_the_learned_variance_is_the_conditional_branchs():
    """A network whose v is +1 (beta) for a real label and -1 (beta~) for the null label: guided
    DDPM with the learned variance steps as with beta, the conditional branch's (GLIDE, DiT)."""
    proc = dl.GaussianDiffusion(dl.schedules.linear(100))

    class Net(torch.nn.Module):
        learn_sigma, num_classes = True, 3

        def forward(self, x, t, cond=None):
            v = torch.where(cond == self.num_classes, -1.0, 1.0).view(-1, 1).expand_as(x)
            return torch.cat([0.1 * x * (1 + cond.view(-1, 1)), v], dim=1)

    labels = torch.tensor([0, 1, 2, 1])
    run = {variance: dl.sample(Net(), proc, (4, 2), "ddpm", 8, cond=labels, guidance=3.0, variance=variance,
                               generator=torch.Generator().manual_seed(0)) for variance in ("learned", "beta")}
    torch.testing.assert_close(run["learned"], run["beta"])


def test_a_text_models_unconditional_branch_is_the_whole_empty_caption():
    """Guidance on token ids [B, L]: out = m(x, t, E) + w (m(x, t, ids) - m(x, t, E)), E the ids of ""
    (every position padding), made here by the tokenizer, not by the denoiser's rule."""
    model = tiny_text_model()
    proc = dl.GaussianDiffusion(dl.schedules.cosine(100))
    ids = model.tokenizer.encode(["a bold 7 on the left", "7"])
    empty = model.tokenizer.encode(["", ""])
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([40, 40])
    with torch.no_grad():
        guided, _ = dl.samplers.denoiser.Denoiser(model, proc, ids, guidance=3.0).model_output(x, t)
        want = model(x, t, empty) + 3.0 * (model(x, t, ids) - model(x, t, empty))
    torch.testing.assert_close(guided, want, rtol=1e-5, atol=1e-6)


class _WordedMixture(torch.nn.Module):
    """A text model with an exact denoiser: data uniform over four Gaussians at (+-2, +-2); the
    words "left"/"right" (ids 1, 2) name the sign of x[0], "top"/"bottom" (3, 4) that of x[1].
    A prompt's denoiser is the exact one of the components it allows (all four when empty)."""

    tokenizer = type("Tokenizer", (), {"vocab_size": 4, "max_length": 2})()
    null_cond = 0

    def __init__(self, proc):
        super().__init__()
        self.proc = proc
        self.signs = torch.tensor([[-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
        self.exact = {}

    def _mixture(self, words: tuple) -> dl.models.GaussianMixtureDenoiser:
        keep = torch.ones(4, dtype=torch.bool)
        for w in words:
            axis, sign = {1: (0, -1.0), 2: (0, 1.0), 3: (1, 1.0), 4: (1, -1.0)}[w]
            keep &= self.signs[:, axis] == sign
        if words not in self.exact:
            self.exact[words] = dl.models.GaussianMixtureDenoiser(self.proc, 2.0 * self.signs[keep], 0.4)
        return self.exact[words]

    def forward(self, x_t, t, cond):
        out = torch.empty_like(x_t)
        for i, row in enumerate(cond.tolist()):
            words = tuple(sorted(w for w in row if w))
            out[i] = self._mixture(words)(x_t[i:i + 1], t[i:i + 1])[0]
        return out


@pytest.mark.parametrize("sigma", [0.05, 0.7, 3.0, 40.0])
def test_composed_prompts_give_the_joint_conditional_when_the_words_are_independent(sigma):
    """Composable diffusion (Liu et al. 2022, eq. 10) at w = 1: D_u + sum_k (D(c_k) - D_u) is
    E[x0 | x, c_1, ..., c_K] exactly when the conditions are independent given the noisy x (the
    scores add, and D = x + sigma^2 score is affine in the score). Here "left" and "top" are the
    signs of two coordinates whose noise is independent: the composed "left AND top" must equal
    the exact denoiser of the one component at (-2, 2), never seen as one prompt."""
    proc = dl.GaussianDiffusion(dl.schedules.cosine(1000))
    model = _WordedMixture(proc)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * (2 + sigma)
    composed = torch.tensor([[[1, 0], [3, 0]]]).expand(64, 2, 2)  # "left AND top"
    joint = torch.tensor([[1, 3]]).expand(64, 2)                 # "left top", one prompt
    got = dl.samplers.denoiser.Denoiser(model, proc, composed, guidance=1.0, clip_x0=None)(x, sigma)
    want = dl.samplers.denoiser.Denoiser(model, proc, joint, guidance=1.0, clip_x0=None)(x, sigma)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # and not by accident: where the noise hides the sign, one part alone is another distribution
    if sigma < 0.5:
        return
    alone = dl.samplers.denoiser.Denoiser(model, proc, composed[:, :1, :].reshape(64, 2), clip_x0=None)(x, sigma)
    assert (alone - want).abs().max() > 0.1


def test_composed_guidance_adds_each_parts_direction_and_empty_parts_add_nothing():
    """out = u + w sum_k m_k (m(c_k) - u), u the empty caption's output, m_k = 0 for a part of padding:
    against separate network calls; one real part (the others padding) is plain guidance."""
    model = tiny_text_model()
    proc = dl.GaussianDiffusion(dl.schedules.cosine(100))
    a, b, empty = (model.tokenizer.encode([p, p]) for p in ("a bold 7", "on the left", ""))
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([40, 40])
    with torch.no_grad():
        got, _ = dl.samplers.denoiser.Denoiser(model, proc, torch.stack([a, b], 1), guidance=2.5).model_output(x, t)
        u = model(x, t, empty)
        want = u + 2.5 * ((model(x, t, a) - u) + (model(x, t, b) - u))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        padded, _ = dl.samplers.denoiser.Denoiser(model, proc, torch.stack([a, empty], 1), guidance=2.5).model_output(x, t)
        plain, _ = dl.samplers.denoiser.Denoiser(model, proc, a, guidance=2.5).model_output(x, t)
        torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-5)


def test_composed_prompts_sample_through_dl_sample_and_are_checked():
    model = tiny_text_model()
    proc = dl.GaussianDiffusion(dl.schedules.cosine(100))
    ids = dl.training.generate.prompts_for(["a bold 7 AND on the left", "a thin 3"], 2, model.tokenizer)
    assert ids.shape == (2, 2, model.tokenizer.max_length) and not ids[1, 1].any()
    x = dl.sample(model, proc, (2, 1, 8, 8), "ddim", 3, cond=ids, guidance=3.0,
                  generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="token ids"):  # ids out of the vocabulary are still refused
        dl.sample(model, proc, (2, 1, 8, 8), "ddim", 3, cond=ids + 100, guidance=3.0)
    with pytest.raises(ValueError, match="empty part"):
        dl.training.generate.prompts_for("a bold 7 AND ", 2, model.tokenizer)


def test_composed_prompts_with_a_learned_variance_or_a_guidance_input():
    """A network that learns its variance: the composed mean as before, v the first part's branch (as
    guidance keeps the conditional branch's); a guided-distilled student (guidance as an input, one call
    per sample) cannot add K directions and is refused by name."""
    proc = dl.GaussianDiffusion(dl.schedules.linear(100))

    class Net(torch.nn.Module):
        tokenizer = type("Tokenizer", (), {"vocab_size": 4, "max_length": 2})()
        null_cond, learn_sigma = 0, True

        def forward(self, x, t, cond):
            words = cond.float()
            mean = 0.1 * x * (1 + words[:, :1]) + 0.05 * words[:, 1:]
            return torch.cat([mean, (words[:, :1] - 2) / 2 * torch.ones_like(x)], dim=1)

    ids = torch.tensor([[[1, 2], [3, 0]], [[4, 0], [0, 0]]])  # "1 2 AND 3", "4" (and padding)
    x, t = torch.randn(2, 1, generator=torch.Generator().manual_seed(0)), torch.tensor([50, 50])
    net = Net()
    out, v = dl.samplers.denoiser.Denoiser(net, proc, ids, guidance=2.0).model_output(x, t)
    u, _ = net(x, t, torch.zeros(2, 2, dtype=torch.long)).chunk(2, dim=1)
    m1, v1 = net(x, t, ids[:, 0]).chunk(2, dim=1)
    m2, _ = net(x, t, ids[:, 1]).chunk(2, dim=1)
    said = torch.tensor([[1.0], [0.0]])  # the second sample's second part is padding: it adds nothing
    torch.testing.assert_close(out, u + 2.0 * ((m1 - u) + said * (m2 - u)))
    torch.testing.assert_close(v, v1)
    net.guidance_input = True
    with pytest.raises(ValueError, match="composed prompts .* guidance scale as an input"):
        dl.samplers.denoiser.Denoiser(net, proc, ids, guidance=2.0)


def test_a_negative_prompt_takes_the_unconditional_branchs_place():
    """out = m(neg) + w (m(c) - m(neg)) against separate network calls, for one prompt and for a composed
    one (u + w sum_k (m(c_k) - u) with u = m(neg)); w = 0 is the negative prompt's own output."""
    model = tiny_text_model()
    proc = dl.GaussianDiffusion(dl.schedules.cosine(100))
    a, b, neg = (model.tokenizer.encode([p, p]) for p in ("a 7", "on the left", "bold"))
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([40, 40])
    D = dl.samplers.denoiser.Denoiser
    with torch.no_grad():
        n = model(x, t, neg)
        got, _ = D(model, proc, a, guidance=3.0, negative_cond=neg).model_output(x, t)
        torch.testing.assert_close(got, n + 3.0 * (model(x, t, a) - n), rtol=1e-5, atol=1e-5)
        got, _ = D(model, proc, torch.stack([a, b], 1), guidance=2.0, negative_cond=neg).model_output(x, t)
        torch.testing.assert_close(got, n + 2.0 * ((model(x, t, a) - n) + (model(x, t, b) - n)), rtol=1e-5, atol=1e-5)
        got, _ = D(model, proc, a, guidance=0.0, negative_cond=neg).model_output(x, t)
        torch.testing.assert_close(got, n, rtol=1e-6, atol=1e-6)
        plain, _ = D(model, proc, a, guidance=3.0).model_output(x, t)
        assert (plain - D(model, proc, a, guidance=3.0, negative_cond=neg).model_output(x, t)[0]).abs().max() > 1e-3


def test_a_negative_prompt_steers_sampling_away_on_the_exact_mixture():
    """On four Gaussians at (+-2, +-2) with exact per-prompt denoisers: "left" at w = 3 draws the left
    pair, top and bottom alike; with the negative prompt "top" it samples p(x | left)^3 / p(x | top)^2,
    which puts the samples at the bottom left."""
    proc = dl.GaussianDiffusion(dl.schedules.cosine(1000))
    model = _WordedMixture(proc)
    n = 200
    left, top = torch.tensor([[1, 0]]).expand(n, 2), torch.tensor([[3, 0]]).expand(n, 2)
    kw = dict(guidance=3.0, generator=torch.Generator().manual_seed(0), clip_x0=None)
    x = dl.sample(model, proc, (n, 2), "ddim", 20, cond=left, **kw).double()
    assert (x[:, 0] < 0).float().mean() > 0.97 and 0.35 < (x[:, 1] > 0).float().mean() < 0.65
    kw["generator"] = torch.Generator().manual_seed(0)
    x = dl.sample(model, proc, (n, 2), "ddim", 20, cond=left, negative_cond=top, **kw).double()
    assert ((x[:, 0] < 0) & (x[:, 1] < 0)).float().mean() > 0.85  # (0.94 to 0.96 here; about half without it)


def test_negative_prompts_are_checked():
    model = tiny_text_model()
    proc = dl.GaussianDiffusion(dl.schedules.cosine(100))
    ids, neg = model.tokenizer.encode(["a 7"] * 2), model.tokenizer.encode(["bold"] * 2)
    with pytest.raises(ValueError, match="needs guidance != 1"):
        dl.sample(model, proc, (2, 1, 8, 8), "ddim", 2, cond=ids, negative_cond=neg)
    with pytest.raises(ValueError, match=r"negative_cond must be a condition a sample, of shape \(2, "):
        dl.samplers.denoiser.Denoiser(model, proc, ids, guidance=3.0, negative_cond=neg[:1])
    with pytest.raises(ValueError, match="negative_cond: token ids must lie in"):  # out of the vocabulary, named
        dl.sample(model, proc, (2, 1, 8, 8), "ddim", 2, cond=ids, guidance=3.0, negative_cond=neg + 1000)

    class Student(torch.nn.Module):
        tokenizer, null_cond, guidance_input = model.tokenizer, 0, True

        def forward(self, x, t, cond, guidance=None):
            return torch.zeros_like(x)

    with pytest.raises(ValueError, match="guided-distilled student"):
        dl.samplers.denoiser.Denoiser(Student(), proc, ids, guidance=3.0, negative_cond=neg)


def test_a_negative_prompt_with_the_empty_caption_in_a_composed_batch():
    """A prompt of one part beside a composed one is padded to K parts; the empty caption "" among
    them still moves away from the negative prompt, out(neg) + w (out("") - out(neg)), as it does
    alone (its padding row is its one part, not nothing)."""
    model = tiny_text_model()
    proc = dl.GaussianDiffusion(dl.schedules.cosine(100))
    ids = dl.training.generate.prompts_for(["a 7 AND on the left", ""], 2, model.tokenizer)
    empty, neg = model.tokenizer.encode(["", ""]), model.tokenizer.encode(["bold", "bold"])
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([40, 40])
    with torch.no_grad():
        got, _ = dl.samplers.denoiser.Denoiser(model, proc, ids, guidance=3.0, negative_cond=neg).model_output(x, t)
        n = model(x, t, neg)
        torch.testing.assert_close(got[1], (n + 3.0 * (model(x, t, empty) - n))[1], rtol=1e-5, atol=1e-5)


def test_a_negative_prompt_reaches_a_model_that_runs_its_own_sampling():
    """A model with its own sampling_run (the speed layer's Accelerated) is sampled step by step under
    a negative prompt, which a whole-run hook does not take: same samples as the plain network."""
    model = tiny_text_model()
    proc = dl.GaussianDiffusion(dl.schedules.cosine(100))
    ids, neg = model.tokenizer.encode(["a 7"] * 2), model.tokenizer.encode(["bold"] * 2)
    fast = dl.accel.accelerate(model, channels_last=True)
    assert callable(getattr(fast, "sampling_run", None))

    def draw(net, **kw):
        return dl.sample(net, proc, (2, 1, 8, 8), "ddim", 2, cond=ids, guidance=3.0,
                         generator=torch.Generator().manual_seed(0), **kw)

    want = draw(model, negative_cond=neg)
    torch.testing.assert_close(draw(fast, negative_cond=neg), want, rtol=1e-5, atol=1e-5)
    assert (draw(fast) - want).abs().max() > 1e-3
