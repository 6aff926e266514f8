"""The discrete Gaussian diffusion process of DDPM: q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0),
the three prediction types (eps, x0, v) and the noise-regression loss.

Notation (Ho et al. 2020; Salimans & Ho 2022 for v):

    x_t   = alpha_t x_0 + sigma_t eps,   alpha_t = sqrt(abar_t),  sigma_t = sqrt(1 - abar_t)
    v     = alpha_t eps - sigma_t x_0
    x_0   = (x_t - sigma_t eps) / alpha_t = alpha_t x_t - sigma_t v
    eps   = (x_t - alpha_t x_0) / sigma_t = sigma_t x_t + alpha_t v

Samplers work with the equivalent "variance exploding" noise level
``sigma = sigma_t / alpha_t = sqrt((1 - abar_t) / abar_t)`` (Karras et al. 2022): see
:meth:`GaussianDiffusion.sigma_of` and :meth:`GaussianDiffusion.t_of`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ..schedules import NoiseSchedule
from ..validation import X0_FIX, check_labels, float_input, is_int
from .base import Process, call_model_with_variance, check_clip_x0, model_attribute, vp_scale

__all__ = ["GaussianDiffusion", "discretized_gaussian_log_likelihood"]


class GaussianDiffusion(Process):
    """The forward process of a :class:`~difflab.schedules.NoiseSchedule` and its posterior.

    ``prediction`` is what the network outputs: ``"eps"`` (the noise, Ho et al.),
    ``"x0"`` (the clean data) or ``"v"`` (Salimans & Ho 2022). ``clip_x0``: the range of the
    data, |x0| <= clip_x0 (1 for images scaled to [-1, 1]), to which the samplers clip their x0
    estimates unless told otherwise (diffusers' ``clip_sample``); None: data without a known
    bound. With eps prediction the estimate x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    multiplies the network's error by up to 1 / sqrt(abar_T) (20,000 for the cosine schedule at
    T = 1000), so an unclipped run can leave the data's range far behind.
    """

    def __init__(self, schedule: NoiseSchedule, prediction: str = "eps", clip_x0: Optional[float] = None) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(
                f"schedule must be a NoiseSchedule (e.g. dl.schedules.linear()), got {type(schedule).__name__}"
            )
        if prediction not in self.predictions:
            raise ValueError(
                f"unknown prediction type {prediction!r} for GaussianDiffusion; choose one of "
                f"{', '.join(self.predictions)} (the velocity eps - x0 is FlowMatching's)"
            )
        self.schedule = schedule
        self.prediction = prediction
        self.clip_x0 = check_clip_x0(clip_x0)
        self.T = schedule.T
        self.t_min, self.t_max = 0.0, float(self.T - 1)

        betas = schedule.betas
        abar = schedule.alphas_cumprod
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        self.betas = betas
        self.alphas = schedule.alphas
        self.alphas_cumprod = abar
        self.alphas_cumprod_prev = abar_prev
        self.sqrt_alphas_cumprod = abar.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - abar).sqrt()
        # Posterior q(x_{t-1} | x_t, x_0) = N(c1 x_0 + c2 x_t, beta~_t I)   (Ho et al., eqs. 6-7)
        self.posterior_variance = betas * (1 - abar_prev) / (1 - abar)
        # beta~ is 0 at t = 0: clip the log at beta~_1 as DDPM's code does (a one-step process
        # has no beta~_1: there at beta_0, the other choice of Ho et al. sec. 3.2)
        first = self.posterior_variance[1:2] if len(betas) > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, self.posterior_variance[1:]]))
        self.log_betas = betas.log()
        self.posterior_mean_coef1 = betas * abar_prev.sqrt() / (1 - abar)
        self.posterior_mean_coef2 = (1 - abar_prev) * self.alphas.sqrt() / (1 - abar)
        # VE noise level sigma_t = sqrt((1 - abar_t) / abar_t), increasing in t.
        self.sigmas = ((1 - abar) / abar).sqrt()
        self._log_sigmas = self.sigmas.log()
        self._cache: dict[tuple, Tensor] = {}

    def __repr__(self) -> str:
        clip = "" if self.clip_x0 is None else f", clip_x0={self.clip_x0:g}"
        return f"GaussianDiffusion({self.schedule!r}, prediction={self.prediction!r}{clip})"

    # --------------------------------------------------- the process interface
    discrete = True
    default_spacing = "trailing"
    predictions = ("eps", "x0", "v")

    def scale(self, sigma):
        """sqrt(abar) at noise level sigma: x_t = x / sqrt(1 + sigma^2)."""
        return vp_scale(sigma)

    def training_times(self, n: int, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
        """n timesteps uniform on 0 .. T-1 (torch.long)."""
        return torch.randint(0, self.T, (n,), device=device, generator=generator)

    def timestep(self, sigma: float, batch: int, device=None) -> Tensor:
        """The timestep of sigma: a long tensor on the training grid, else a float tensor."""
        t = float(self.t_of(torch.tensor(float(sigma), dtype=torch.float64)))
        if abs(t - round(t)) < 1e-6:
            return torch.full((batch,), int(round(t)), dtype=torch.long, device=device)
        return torch.full((batch,), t, dtype=torch.float32, device=device)

    def sigma_of_timestep(self, timestep: Tensor) -> Tensor:
        return self.sigma_of(timestep)

    def model_time(self, t: Tensor) -> Tensor:
        return t  # the network sees the timestep itself, long on the grid

    def signature(self) -> tuple:
        return ("GaussianDiffusion", self.prediction, tuple(self.alphas_cumprod.tolist()))

    def network_signature(self) -> tuple:
        return self.signature()  # the schedule maps noise levels to timesteps

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        if not t.is_floating_point():
            return self.sqrt_alphas_cumprod[t.long().cpu()].to(t.device), self.sqrt_one_minus_alphas_cumprod[
                t.long().cpu()].to(t.device)
        return super().alpha_sigma(t)

    def _coefficients(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._alpha_sigma(t, x)  # the tables, in x's dtype: q_sample, convert and target read these

    def _x0_error_factor(self, t: Tensor) -> Tensor:
        # ||x0 - x0_hat||^2 = ||eps - eps_hat||^2 / SNR = ||v - v_hat||^2 / (SNR + 1)
        snr = self.snr(t).to(t.device)
        return {"x0": torch.ones_like(snr), "eps": snr, "v": snr + 1}[self.prediction]

    # ------------------------------------------------------------------ helpers
    def _table(self, name: str, device: torch.device, dtype: torch.dtype) -> Tensor:
        """A coefficient table on ``device`` in ``dtype``, cached so the hot loop copies nothing."""
        key = (name, device, dtype)
        if key not in self._cache:
            self._cache[key] = getattr(self, name).to(device=device, dtype=dtype)
        return self._cache[key]

    def cache_tables(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "GaussianDiffusion":
        """Copy every per-timestep coefficient table to ``device`` in ``dtype`` now, once.

        The hot loops look tables up in a cache that fills on first use; filling it inside a
        ``torch.compile``d function changes the cache and so recompiles the function once. Call
        this before compiling a step (the trainer does) to compile it once."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        for name in _TABLES:
            self._table(name, device, dtype)
        for name in _TABLES_FLOAT64:  # noise levels stay in float64 (interpolated in log sigma)
            self._table(name, device, torch.float64)
        return self

    def _check_t_values(self, t: Tensor) -> Tensor:
        """t's dtype, and its values where reading them costs no host-device sync: integers in
        0..T-1, floats finite and in [0, T-1]."""
        values = t.device.type == "cpu" and not torch.compiler.is_compiling()
        if t.is_floating_point():
            if values and not torch.isfinite(t).all():
                raise ValueError(f"t must be finite, got {t.tolist() if t.numel() <= 8 else 'non-finite values'}")
            if values and ((t < 0).any() or (t > self.T - 1).any()):
                raise ValueError(f"t must lie in [0, {self.T - 1}], got values in [{t.min()}, {t.max()}]")
        elif t.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            if values and ((t < 0).any() or (t >= self.T).any()):
                raise ValueError(
                    f"t must lie in 0 .. {self.T - 1} (0-based, T = {self.T}), "
                    f"got values in [{int(t.min())}, {int(t.max())}]"
                )
        else:
            raise TypeError(f"t must be an integer (or float) tensor, got dtype {t.dtype}")
        return t

    def _at(self, name: str, t: Tensor, x: Tensor) -> Tensor:
        """Coefficient ``name`` at timesteps t, shaped to broadcast against x."""
        if t.is_floating_point():
            if name not in ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"):
                raise ValueError(f"{name} is only defined at integer timesteps")
            sigma = self.sigma_of(t).to(x.dtype)
            alpha = (1 + sigma**2).rsqrt()
            value = alpha if name == "sqrt_alphas_cumprod" else sigma * alpha
        else:
            value = self._table(name, t.device, x.dtype)[t.long()]
        return value.view(-1, *([1] * (x.ndim - 1)))

    def _alpha_sigma(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._at("sqrt_alphas_cumprod", t, x), self._at("sqrt_one_minus_alphas_cumprod", t, x)

    # ------------------------------------------------------- continuous noise level
    def sigma_of(self, t: Tensor) -> Tensor:
        """VE noise level sigma(t) = sqrt((1 - abar_t)/abar_t); float t interpolates log sigma linearly."""
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            self._check_t_values(t)  # integers index a table (a negative one from its end)
        elif t.device.type == "cpu" and not torch.compiler.is_compiling() and not torch.isfinite(t).all():
            raise ValueError("t must be finite (a NaN would pass the clamp to [0, T-1] below)")
        if not t.is_floating_point():
            return self._table("sigmas", t.device, torch.float64)[t.long()]
        t = t.to(torch.float64).clamp(0, self.T - 1)
        log_sigmas = self._table("_log_sigmas", t.device, torch.float64)
        lo = t.floor().long().clamp(max=self.T - 2) if self.T > 1 else t.long()
        if self.T == 1:
            return log_sigmas[lo].exp()
        w = t - lo
        return ((1 - w) * log_sigmas[lo] + w * log_sigmas[lo + 1]).exp()

    def t_of(self, sigma: Tensor) -> Tensor:
        """Inverse of :meth:`sigma_of`: the (fractional) timestep of noise level sigma, as float64."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        log_sigmas = self._table("_log_sigmas", sigma.device, torch.float64)
        log_sigma = sigma.clamp(min=1e-300).log()
        if self.T == 1:
            return torch.zeros_like(sigma)
        idx = torch.searchsorted(log_sigmas, log_sigma.contiguous()).clamp(1, self.T - 1)
        lo, hi = log_sigmas[idx - 1], log_sigmas[idx]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1).to(torch.float64) + w

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio abar_t / (1 - abar_t) = 1 / sigma(t)^2."""
        return self.sigma_of(t) ** -2

    # ----------------------------------------------------------- forward process
    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean sqrt(abar_t) x0 and variance (1 - abar_t) of q(x_t | x_0)."""
        self.check_t(t, x0)
        alpha, sigma = self._alpha_sigma(t, x0)
        return alpha * x0, (sigma**2).expand_as(x0)

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)  (Ho et al. 2020, eqs. 6-7).

        mean = beta_t sqrt(abar_{t-1}) / (1 - abar_t) x0 + (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t) x_t
        var  = beta_t (1 - abar_{t-1}) / (1 - abar_t)
        """
        if x0.shape != x_t.shape:
            raise ValueError(
                f"x0 and x_t must have the same shape, got {tuple(x0.shape)} and {tuple(x_t.shape)}"
            )
        self.check_t(t, x0)
        if t.is_floating_point():
            raise ValueError("q_posterior needs integer timesteps t (a torch.long tensor)")
        mean = self._at("posterior_mean_coef1", t, x0) * x0 + self._at("posterior_mean_coef2", t, x0) * x_t
        var = self._at("posterior_variance", t, x0).expand_as(x0)
        log_var = self._at("posterior_log_variance_clipped", t, x0).expand_as(x0)
        return mean, var, log_var

    # ------------------------------------------------------- prediction types
    def predict_v(self, x_t: Tensor, t: Tensor, model_output: Tensor) -> Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 from the model's output."""
        return self.convert(x_t, t, model_output, "v")

    # -------------------------------------------------------------- likelihood
    def learned_log_variance(self, v: Tensor, t: Tensor) -> Tensor:
        """log Sigma_theta(x_t, t) = frac log beta_t + (1 - frac) log beta~_t, frac = (v + 1) / 2:
        the learned variance of improved DDPM (Nichol & Dhariwal 2021, eq. 15) from the network's
        variance output v, at 0-based timesteps t (long [B]); beta~ clipped at t = 0 as in
        ``posterior_log_variance_clipped``."""
        self.check_t(t, v, "v")
        frac = (v + 1) / 2
        return frac * self._at("log_betas", t, v) + (1 - frac) * self._at("posterior_log_variance_clipped", t, v)

    def vlb_term(self, x0: Tensor, x_t: Tensor, t: Tensor, x0_hat: Tensor, log_variance: Tensor,
                 bins: int = 256) -> Tensor:
        """One term of the variational bound per sample [B], in nats, for p(x_{t-1} | x_t) =
        N(mu~_t(x0_hat, x_t), exp(log_variance)) (Ho et al. 2020, eq. 5; ``log_variance`` per value
        or broadcastable):

            t >= 1:  L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))
                             = 1/2 sum (log v - log beta~_t + beta~_t / v - 1 + c1_t^2 (x0 - x0_hat)^2 / v)
            t = 0:   L_0 = -log p(x0 | x_1), discretized over ``bins`` levels of [-1, 1] (eq. 13)

        (0-based t: index 0 is the paper's t = 1). Computed in x0's dtype."""
        self.check_t(t, x0)
        if t.is_floating_point():
            raise ValueError("vlb_term needs integer timesteps t (a torch.long tensor)")
        for name, value in (("x_t", x_t), ("x0_hat", x0_hat)):
            if value.shape != x0.shape:
                raise ValueError(f"{name} must have x0's shape {tuple(x0.shape)}, got {tuple(value.shape)}")
        try:
            log_variance = log_variance.to(x0.dtype).expand_as(x0)
        except RuntimeError:
            raise ValueError(f"log_variance must broadcast to x0's shape {tuple(x0.shape)} (one per value, or "
                             f"[1]), got {tuple(log_variance.shape)}") from None
        c1 = self._at("posterior_mean_coef1", t, x0)
        log_post = self._at("posterior_log_variance_clipped", t, x0)
        kl = 0.5 * (log_variance - log_post + torch.exp(log_post - log_variance) - 1
                    + (c1 * (x0 - x0_hat)) ** 2 * torch.exp(-log_variance))
        out = kl.flatten(1).sum(1)
        first = t.to(x0.device) == 0
        # at t = 0 the model's mean mu~_0(x0_hat, x_1) is x0_hat itself (c1_0 = 1, c2_0 = 0). On the
        # CPU the float64 decoder runs on those rows only; on an accelerator on every row, as reading
        # which rows they are would stall the step on a host sync (and break a captured step)
        if x0.device.type == "cpu" and not torch.compiler.is_compiling():
            if bool(first.any()):
                decoder = -discretized_gaussian_log_likelihood(x0[first], x0_hat[first], 0.5 * log_variance[first],
                                                               bins)
                out = out.index_put((first,), decoder.flatten(1).sum(1).to(out.dtype))
            return out
        decoder = -discretized_gaussian_log_likelihood(x0, x0_hat, 0.5 * log_variance, bins).flatten(1).sum(1)
        return torch.where(first, decoder.to(out.dtype), out)

    def vlb_terms(
        self,
        model: Callable,
        x0: Tensor,
        cond: Optional[Tensor] = None,
        *,
        num_timesteps: Optional[int] = None,
        variance: Optional[str] = None,
        clip_x0: bool = False,
        bins: int = 256,
        generator: Optional[torch.Generator] = None,
    ) -> dict[str, Tensor]:
        """The terms of the variational bound on -log p(x0), in nats per sample (Ho et al. 2020, eq. 5):

            L_T     = KL(q(x_T | x0) || N(0, I))                                   "prior"
            L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)),  t = 2 .. T      "diffusion" (summed)
            L_0     = -log p(x0 | x_1), a discretized Gaussian over ``bins`` bins of [-1, 1] (eq. 13)

        p(x_{t-1} | x_t) = N(mu~_t(x0_hat, x_t), v_t) uses the model's x0_hat in the posterior mean
        (:meth:`vlb_term`) and the variance v_t: ``variance="posterior"`` (beta~_t), ``"beta"``
        (beta_t; the decoder then uses beta~_2, as DDPM's code does) or ``"learned"`` (the network's
        own, :meth:`learned_log_variance`: a network with ``learn_sigma``). None: "learned" for a
        network that learns its variance, else "posterior". Data must lie in [-1, 1] on the grid of
        ``bins`` levels (images scaled from 0..255), so the bound is one on a probability mass and
        bits/dim compare with the literature.

        ``num_timesteps=None`` sums all T - 1 KL terms (T model calls). ``num_timesteps=K`` draws
        one t uniformly from each of K equal strata of 2..T and weights it by its stratum's size:
        an unbiased estimate of the sum with K + 1 model calls. Each term uses fresh noise
        (``generator``). Returns ``prior``, ``decoder``, ``diffusion``, ``total`` ([B], float64)
        and the 0-based ``timesteps`` evaluated with their ``weights``. ``x0`` must be a float
        tensor; the model sees it in its parameters' dtype (as in :meth:`training_loss`).
        """
        if not isinstance(x0, Tensor) or x0.ndim < 2:
            raise ValueError(f"x0 must be a batch tensor of shape [B, ...], got {getattr(x0, 'shape', x0)}")
        x0 = float_input(x0, "x0", model, X0_FIX)
        learned = bool(model_attribute(model, "learn_sigma"))
        if variance is None:
            variance = "learned" if learned else "posterior"
        if variance not in ("posterior", "beta", "learned"):
            raise ValueError(f"variance must be 'posterior' (beta~_t), 'beta' (beta_t) or 'learned' (the "
                             f"network's own), got {variance!r}")
        if variance == "learned" and not learned:
            raise ValueError("variance='learned' needs a network that learns its variance (learn_sigma); this one "
                             "does not: use variance='posterior' or 'beta'")
        if not is_int(bins) or bins < 2:
            raise ValueError(f"bins must be an integer >= 2 (256 for 8-bit images), got {bins!r}")
        if self.T < 2:
            raise ValueError("the variational bound needs a schedule with T >= 2 steps")
        lo, hi = float(x0.min()), float(x0.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("x0 must be finite: it holds NaN or infinite values")
        if lo < -1 - 1e-4 or hi > 1 + 1e-4:
            raise ValueError(
                f"x0 must lie in [-1, 1] (images scaled from 0..255) for the discretized decoder, "
                f"got values in [{lo:.3g}, {hi:.3g}]"
            )
        B = x0.shape[0]
        if cond is not None:
            cond = check_labels(model, cond, B)
        timesteps, weights = _stratified_timesteps(self.T, num_timesteps, generator)
        f64 = torch.float64
        x0_64 = x0.to(f64)
        zero = torch.zeros(B, dtype=torch.long, device=x0.device)

        def term(t_index: int) -> Tensor:
            t = zero + t_index
            noise = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device, generator=generator)
            x_t = self._q_sample(x0, t, noise)
            with torch.no_grad():
                out, v = call_model_with_variance(model, x_t, t, cond)
            x0_hat = self.predict_x0(x_t, t, out).to(f64)
            if clip_x0:
                x0_hat = x0_hat.clamp(-1, 1)
            if variance == "learned":
                log_var = self.learned_log_variance(v.to(f64), t)
            elif variance == "beta" and t_index > 0:
                log_var = self.log_betas[t_index].view(1)
            else:  # beta~_t, clipped at t = 0 (the decoder's beta~_2 in the paper's numbering)
                log_var = self.posterior_log_variance_clipped[t_index].view(1)
            return self.vlb_term(x0_64, x_t.to(f64), t, x0_hat, log_var.to(x0.device), bins)

        # Prior: KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, 1)), per dimension then summed.
        abar_T = self.alphas_cumprod[-1].item()
        prior = 0.5 * (abar_T * x0_64**2 + (1 - abar_T) - 1 - math.log(1 - abar_T))
        prior = prior.flatten(1).sum(1)
        decoder = term(0)
        diffusion = torch.zeros(B, dtype=f64, device=x0.device)
        for i, w in zip(timesteps.tolist(), weights.tolist()):
            diffusion = diffusion + w * term(i)
        return {
            "prior": prior,
            "decoder": decoder,
            "diffusion": diffusion,
            "total": prior + decoder + diffusion,
            "timesteps": timesteps,
            "weights": weights,
        }

    def vlb_bits_per_dim(self, model: Callable, x0: Tensor, cond: Optional[Tensor] = None, **kwargs) -> Tensor:
        """The variational bound of :meth:`vlb_terms` in bits per dimension, per sample [B]:
        (L_T + sum_t L_{t-1} + L_0) / (D ln 2), D = number of values in one x0."""
        terms = self.vlb_terms(model, x0, cond, **kwargs)
        return terms["total"] / (x0[0].numel() * math.log(2.0))


# The per-timestep coefficients looked up in the hot loops (``_at`` in the data's dtype, and
# the noise levels in float64); ``cache_tables`` puts them on a device.
_TABLES = ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "posterior_mean_coef1",
           "posterior_mean_coef2", "posterior_variance", "posterior_log_variance_clipped", "log_betas")
_TABLES_FLOAT64 = ("sigmas", "_log_sigmas")

def _stratified_timesteps(
    T: int, num_timesteps: Optional[int], generator: Optional[torch.Generator]
) -> tuple[Tensor, Tensor]:
    """0-based timesteps 1 .. T-1 of the KL terms and their weights: all of them (weight 1), or one
    uniform draw from each of K strata, weighted by the stratum's size (an unbiased estimate of the sum).

    The strata are equal in log t (edges ~ geomspace(1, T)): the terms are largest and change
    fastest at small t, which therefore get small strata (exact for the first few steps), so the
    estimate's variance is far below that of equal strata."""
    n = T - 1
    if num_timesteps is not None and (not is_int(num_timesteps) or num_timesteps < 1):
        raise ValueError(
            f"num_timesteps must be None (all {n} terms) or a positive integer, got {num_timesteps!r}"
        )
    if num_timesteps is None or num_timesteps >= n:
        return torch.arange(1, T), torch.ones(n, dtype=torch.float64)
    K = int(num_timesteps)
    geo = torch.logspace(0, math.log10(T), K + 1, dtype=torch.float64).round().long().tolist()
    edges = [1] + [0] * K
    for j in range(1, K + 1):  # strictly increasing, ending at T, each stratum non-empty
        edges[j] = min(max(int(geo[j]), edges[j - 1] + 1), T - (K - j))
    edges[K] = T
    edges_t = torch.tensor(edges)
    sizes = edges_t[1:] - edges_t[:-1]
    u = torch.rand(K, generator=generator, dtype=torch.float64)
    t = edges_t[:-1] + torch.minimum((u * sizes).floor().long(), sizes - 1)
    return t, sizes.to(torch.float64)


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Union[float, Tensor],
                                        bins: int = 256) -> Tensor:
    """log P(x) for x on the grid of ``bins`` levels in [-1, 1] under N(mean, exp(log_scale)^2)
    integrated over x's bin [x - d, x + d], d = 1 / (bins - 1); the end bins reach to -inf and +inf
    (Ho et al. 2020, eq. 13). Elementwise, float64, stable in the tails (log-CDF differences)."""
    x = x.to(torch.float64)
    mean = torch.as_tensor(mean, dtype=torch.float64)
    inv_scale = torch.exp(-torch.as_tensor(log_scale, dtype=torch.float64))
    d = 1.0 / (bins - 1)
    a = (x - d - mean) * inv_scale  # lower edge, standardised
    b = (x + d - mean) * inv_scale  # upper edge
    first, last = x < -1 + d, x > 1 - d
    a = torch.where(first, torch.full_like(a, -math.inf), a)
    b = torch.where(last, torch.full_like(b, math.inf), b)
    # log(Phi(b) - Phi(a)) computed on the side of the mean where the CDFs are not close to 1.
    upper_side = (a + b) > 0
    lo = torch.where(upper_side, -b, a)
    hi = torch.where(upper_side, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    log_lo = torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp((log_lo - log_hi).clamp(max=0.0)))
