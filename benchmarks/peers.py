"""Sampler accuracy against known answers, ours beside k-diffusion's and diffusers' (when installed).

Every sampler starts from the same ``x_T = 80 z`` and calls the same float64 denoiser on its own Karras grid
(sigma in [0.002, 80], rho = 7; ours and k-diffusion's share one grid, diffusers' EDM schedulers build the same
grid in float32). For each NFE budget a sampler runs the most steps whose NFE fits; the error is the RMSE
against the exact answer:

- ``gauss``: N(mu, diag(s^2)) on 1x8x8 with s^2 log-spaced over four decades (1e-4 .. 1): stiff as
  sigma -> 0, like images; the probability-flow ODE solution is closed form (docs/DESIGN.md, "Tests").
- ``mixture``: 32 digits, each blurred by N(0, tau^2 I), tau = 0.05 (a Gaussian mixture: nonlinear flow,
  stiff like ``gauss``; plain D* would snap every sampler onto the same training image); its denoiser is
  built from D*; reference: Heun on 2,000 steps of the same grid.

k-diffusion (``pip install --no-deps k-diffusion==0.1.1.post1`` beside ``pip install -e .[bench]``) imports
torchvision from its package ``__init__``; only ``k_diffusion/sampling.py`` is needed, so
:func:`load_k_diffusion` loads that one file under a bare package whose ``utils`` holds the one helper it
uses (``append_dims``).
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch

from reprodiff import sampling
from reprodiff.data import load_digits
from reprodiff.optimal import EmpiricalOptimalDenoiser

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
Run = Callable[[Callable, torch.Tensor, torch.Tensor], torch.Tensor]  # (D, x_T, sigmas) -> x_0


@dataclass(frozen=True)
class Entry:
    """A sampler on a grid of ``steps`` steps (``"karras"``, or ``"spectral"``: from the problem's data
    variances), with its NFE on that grid."""

    name: str
    run: Run
    nfe: Callable[[int], int]
    grid: str = "karras"


def grid(steps: int) -> torch.Tensor:
    return sampling.karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)


# ------------------------------------------------------------------------------------------- problems
class Gaussian:
    """Closed-form denoiser of N(mu, diag(s^2)) (float64) and the exact flow from sigma_max to 0."""

    def __init__(self, shape: tuple[int, ...] = (1, 8, 8), decades: float = 4.0) -> None:
        n = math.prod(shape)
        self.s2 = torch.logspace(-decades, 0, n, dtype=torch.float64).reshape(shape)
        self.mu = torch.linspace(-0.5, 0.5, n, dtype=torch.float64).reshape(shape)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        s2 = sigma.to(torch.float64).view(-1, *[1] * (x.dim() - 1)) ** 2
        return self.mu + self.s2 / (self.s2 + s2) * (x.to(torch.float64) - self.mu)

    def exact(self, x_T: torch.Tensor) -> torch.Tensor:
        return self.mu + (x_T - self.mu) * (self.s2 / (self.s2 + SIGMA_MAX**2)).sqrt()


class Mixture:
    """Optimal denoiser of ``Y + tau n``: ``E[y|x] = D*(x, sqrt(sigma^2 + tau^2))``, then the Gaussian
    posterior of the blur around it, ``+ tau^2 / (tau^2 + sigma^2) (x - E[y|x])``."""

    def __init__(self, Y: torch.Tensor, tau: float = 0.05) -> None:
        self.D_star, self.tau2 = EmpiricalOptimalDenoiser(Y.double(), dtype=torch.float64), tau**2

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        s2 = sigma.to(torch.float64) ** 2
        y = self.D_star(x, (s2 + self.tau2).sqrt())
        return y + (self.tau2 / (self.tau2 + s2)).view(-1, *[1] * (x.dim() - 1)) * (x - y)


def problems(count: int = 64) -> dict[str, tuple[Callable, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """name -> (D, x_T, answer, the data's variances: what a user computes from the training set)."""
    z = sampling.noise(0, count, (1, 8, 8), dtype=torch.float64)
    x_T = z * SIGMA_MAX
    g = Gaussian()
    digits, tau = load_digits().images[:32], 0.05
    mix = Mixture(digits, tau)
    return {"gauss": (g, x_T, g.exact(x_T), g.s2.flatten()),
            "mixture": (mix, x_T, sampling.heun(mix, x_T, grid(2000)), sampling.data_variances(digits) + tau**2)}


# ----------------------------------------------------------------------------------------------- ours
def ours() -> list[Entry]:
    def entry(name: str, g: str) -> Entry:
        smp = sampling.SAMPLERS[name]
        return Entry(name + ("" if g == "karras" else "@spec"), smp, smp.nfe, g)

    return [entry(n, g) for g in ("karras", "spectral") for n in sampling.SAMPLERS if n != "onestep"]


# ---------------------------------------------------------------------------------------------- peers
def load_k_diffusion() -> types.ModuleType | None:
    """``k_diffusion.sampling`` alone (see the module docstring), or None when k-diffusion is missing."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = next(iter(spec.submodule_search_locations))
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [root]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]  # k_diffusion.utils.append_dims
    pkg.utils = utils
    sys.modules.setdefault("k_diffusion", pkg)
    sys.modules.setdefault("k_diffusion.utils", utils)
    mod_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", f"{root}/sampling.py")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules["k_diffusion.sampling"] = module
    mod_spec.loader.exec_module(module)
    return module


def k_diffusion_entries(K: types.ModuleType) -> list[Entry]:
    def entry(name: str, fn: Callable, nfe: Callable[[int], int], **kw: float) -> Entry:
        return Entry(f"k:{name}", lambda D, x, sigmas: fn(D, x, sigmas, disable=True, **kw), nfe)

    return [
        entry("euler", K.sample_euler, lambda n: n),
        entry("heun", K.sample_heun, lambda n: 2 * n - 1),
        entry("dpm_2", K.sample_dpm_2, lambda n: 2 * n - 1),
        entry("lms", K.sample_lms, lambda n: n),
        entry("dpmpp_2m", K.sample_dpmpp_2m, lambda n: n),
        entry("dpmpp_3m", K.sample_dpmpp_3m_sde, lambda n: n, eta=0.0),
    ]


def _diffusers_run(make: Callable[[], object]) -> Run:
    """Drive a diffusers EDM scheduler with the denoiser: model_output = (D - c_skip x) / c_out (epsilon)."""

    def run(D: Callable, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        sch = make()
        sch.set_timesteps(len(sigmas) - 1)  # its own float32 Karras grid of the same size
        sd = sch.config.sigma_data
        for i, t in enumerate(sch.timesteps):
            sigma = float(sch.sigmas[i])
            den = D(x, torch.full((x.shape[0],), sigma, dtype=torch.float64))
            c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / math.sqrt(sigma**2 + sd**2)
            x = sch.step((den - c_skip * x) / c_out, t, x).prev_sample
        return x

    return run


def diffusers_entries() -> list[Entry]:
    try:
        from diffusers.utils import logging

        logging.set_verbosity_error()  # "scale_model_input should be called": D takes the unscaled x
        from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler
    except ImportError:
        return []
    grid_kw = {"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "sigma_schedule": "karras", "rho": 7.0}
    out = [Entry("d:EDMEuler", _diffusers_run(lambda: EDMEulerScheduler(**grid_kw)), lambda n: n)]
    for order in (2, 3):
        def make(order: int = order) -> object:
            return EDMDPMSolverMultistepScheduler(solver_order=order, algorithm_type="dpmsolver++", **grid_kw)
        out.append(Entry(f"d:EDMDPM++{order}M", _diffusers_run(make), lambda n: n))
    return out


def peers() -> tuple[list[Entry], list[str]]:
    """The peers that are installed, and one line per missing peer."""
    entries, missing = [], []
    K = load_k_diffusion()
    if K is None:
        missing.append("k-diffusion")
    else:
        entries += k_diffusion_entries(K)
    d = diffusers_entries()
    if not d:
        missing.append("diffusers")
    return entries + d, missing


# ------------------------------------------------------------------------------------------- the table
def steps_for(entry: Entry, budget: int) -> int | None:
    """The most steps whose NFE fits the budget."""
    fits = [n for n in range(1, budget + 1) if entry.nfe(n) <= budget]
    return max(fits) if fits else None


class Counted:
    def __init__(self, D: Callable) -> None:
        self.D, self.calls = D, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        return self.D(x, sigma, cond)


def errors(entries: list[Entry], budgets: tuple[int, ...], problem: tuple) -> dict[str, dict[int, float]]:
    """entry name -> budget -> RMSE; the NFE each entry spends is counted and checked."""
    D, x_T, answer, variances = problem
    table: dict[str, dict[int, float]] = {}
    for e in entries:
        for b in budgets:
            n = steps_for(e, b)
            if n is None:
                continue
            sigmas = grid(n) if e.grid == "karras" else sampling.spectral_sigmas(n, variances, SIGMA_MIN, SIGMA_MAX)
            C = Counted(D)
            with torch.no_grad():
                x = e.run(C, x_T.clone(), sigmas)
            assert C.calls == e.nfe(n) <= b, f"{e.name}: {C.calls} calls, expected {e.nfe(n)}"
            table.setdefault(e.name, {})[b] = float((x.double() - answer).pow(2).mean().sqrt())
    return table


def best(table: dict[str, dict[int, float]], budgets: tuple[int, ...], peer: bool) -> list[tuple[float, str]]:
    """Per budget, the smallest error among ours (``peer=False``) or the peers', with its sampler."""
    return [min((r[b], k) for k, r in table.items() if b in r and (":" in k) == peer) for b in budgets]


def print_accuracy(with_peers: bool, budgets: tuple[int, ...] = (10, 20, 35)) -> None:
    entries, missing = ours(), []
    if with_peers:
        extra, missing = peers()
        entries += extra
    if missing:
        print(f"(peers not installed: {', '.join(missing)}; add them with `pip install -e .[bench]` and "
              "`pip install --no-deps k-diffusion==0.1.1.post1`)")
    fmt = lambda row: " ".join(f"{v:9.2e}" for v, _ in row) + "   " + ", ".join(k for _, k in row)  # noqa: E731
    for pname, problem in problems().items():
        table = errors(entries, budgets, problem)
        print(f"== accuracy on {pname}: RMSE against the exact answer at NFE <= budget ==")
        print(f"  {'sampler':>16} " + " ".join(f"{'<=' + str(b):>9}" for b in budgets))
        for name, row in table.items():
            print(f"  {name:>16} " + " ".join(f"{row[b]:9.2e}" if b in row else f"{'-':>9}" for b in budgets))
        mine = best(table, budgets, peer=False)
        print(f"  {'best ours':>16} {fmt(mine)}")
        if any(":" in k for k in table):
            theirs = best(table, budgets, peer=True)
            print(f"  {'best peer':>16} {fmt(theirs)}")
            ratios = (a[0] / b[0] for a, b in zip(mine, theirs, strict=True))
            print(f"  {'ours / peer':>16} " + " ".join(f"{r:9.2f}" for r in ratios))


if __name__ == "__main__":
    print_accuracy(True)


# -------------------------------------------------------------------------------------------- overhead
def free_denoiser(x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    """A nearly free 'network': returns its input as a new float32 tensor (the cast any network makes)."""
    return x.to(torch.float32, copy=True)


def heun_overhead_ratio(K: types.ModuleType, shape: tuple[int, ...] = (256, 3, 32, 32), steps: int = 18,
                        rounds: int = 7) -> tuple[float, float, float]:
    """Median wall time of our Heun (float64 state) and k-diffusion's ``sample_heun`` (float32 state) on the
    same grid and the same free denoiser, runs interleaved; returns (ours s, theirs s, ratio)."""
    import time

    x = sampling.noise(0, shape[0], shape[1:]) * SIGMA_MAX  # float32, as a user passes it
    sigmas = grid(steps)
    runs = {"ours": lambda: sampling.heun(free_denoiser, x, sigmas),  # float32 in, float64 state, float32 out
            "k": lambda: K.sample_heun(free_denoiser, x, sigmas.float(), disable=True)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        for _ in range(rounds + 1):  # the first round warms up
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    ours, theirs = (sorted(times[k][1:])[rounds // 2] for k in ("ours", "k"))
    return ours, theirs, ours / theirs
