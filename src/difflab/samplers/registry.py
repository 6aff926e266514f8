"""The samplers by name: each one's function, default spacing, options and whether it draws noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..validation import is_real
from .consistency import sample_consistency
from .ddim import sample_ddim
from .ddpm import sample_ddpm
from .dpm_solver import sample_dpmpp_2m, sample_dpmpp_3m
from .euler import sample_euler
from .heun import sample_heun
from .sde import sample_euler_maruyama, sample_pc

__all__ = ["SamplerSpec", "SAMPLERS", "register"]


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its function, default spacing and the options it takes."""

    fn: Callable
    default_spacing: str = "trailing"
    options: tuple[str, ...] = ()
    evals_per_step: int = 1  # model evaluations per step at the default options (the last step may use fewer)
    description: str = ""
    stochastic: Callable[[dict], bool] = lambda options: False  # draws noise during the run, given its options
    # a sampler of consistency models: it reads the model as f(x, sigma) -> x0 at once, not as a
    # denoiser; a step at sigma_min would be wasted (f returns its input there), so a spacing whose
    # last level before 0 is sigma_min (karras, logsnr; the chain's leading, linspace) gives
    # steps + 1 levels and that one is left out
    consistency: bool = False


SAMPLERS: dict[str, SamplerSpec] = {}


def _positive(value) -> bool:
    """A sampler option that switches noise on (eta, s_churn) when positive; anything else is
    left to the sampler's own check."""
    return is_real(value) and value > 0


def register(name: str, spec: SamplerSpec) -> None:
    """Make a sampler available to :func:`sample` and the CLI under ``name``."""
    SAMPLERS[name] = spec


register("ddpm", SamplerSpec(sample_ddpm, "trailing", ("variance",), 1, "DDPM ancestral (Ho et al. 2020)",
                            stochastic=lambda o: True))
register("ddim", SamplerSpec(sample_ddim, "trailing", ("eta",), 1, "DDIM with eta (Song et al. 2021)",
                            stochastic=lambda o: _positive(o.get("eta"))))
register("dpmpp_2m", SamplerSpec(sample_dpmpp_2m, "logsnr", (), 1, "DPM-Solver++(2M), data prediction (Lu et al. 2022)"))
register(
    "dpmpp_3m",
    SamplerSpec(sample_dpmpp_3m, "logsnr", ("lower_order_final", "variant"), 1, "DPM-Solver++ 3rd-order multistep"),
)
_CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
register("euler", SamplerSpec(sample_euler, "logsnr", _CHURN, 1, "Euler on the PF-ODE (Karras et al. 2022)",
                             stochastic=lambda o: _positive(o.get("s_churn"))))
register("heun", SamplerSpec(sample_heun, "logsnr", _CHURN, 2, "Heun on the PF-ODE, 2*steps-1 calls (Karras et al. 2022)",
                            stochastic=lambda o: _positive(o.get("s_churn"))))
# On the DDPM chain "logsnr", a constant ratio sigma_{i+1} / sigma_i (continuous processes use
# their own spacing, see default_spacing): an Euler-Maruyama step adds sigma_i^2 - sigma_{i+1}^2
# of noise, first-order accurate only where that ratio is near 1. A DDPM grid's top step can be
# far from it (the cosine schedule at T = 1000: sigma 20291 -> 128 in its first trailing step),
# which leaves the output over-dispersed whatever the number of steps (measured in .sde's docstring).
register("euler_maruyama", SamplerSpec(sample_euler_maruyama, "logsnr", (), 1,
                                       "Euler-Maruyama on the reverse SDE (Song et al. 2021)",
                                       stochastic=lambda o: True))
# 1 + corrector_steps calls per step (2 at the default corrector_steps = 1); the last step, to
# sigma = 0, has no corrector: steps + (steps - 1) corrector_steps calls in all.
register("pc", SamplerSpec(sample_pc, "logsnr", ("snr", "corrector_steps"), 2,
                           "predictor-corrector: Euler-Maruyama + Langevin (Song et al. 2021)",
                           stochastic=lambda o: True))
register("consistency", SamplerSpec(sample_consistency, "trailing", (), 1,
                                    "consistency multistep: x0 = f(x, sigma), then fresh noise (Song et al. 2023)",
                                    stochastic=lambda o: True, consistency=True))
