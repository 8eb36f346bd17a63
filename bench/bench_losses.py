"""The losses, provider against provider: fused kernels, plain PyTorch, torch.compile, peers.

Each comparison group is one op, mode, shape, dtype and device, e.g.
``power_spherical_loss fwd+bwd B=512 D=2048 float32 cpu``; its providers are

- ``fused-cpu`` / ``fused-triton`` / ``fused-cuda``: ``vissiam_kernels`` with that VISSIAM_BACKEND;
- ``eager``: the package's pure-PyTorch reference (``vissiam_kernels.reference``), as written;
- ``compiled``: ``torch.compile(dynamic=False)`` of the same reference, compiled during warm-up;
- ``power_spherical_pkg`` (power spherical only): ``-PowerSpherical(mu, kappa).log_prob(z)`` from the
  PyPI ``power-spherical`` package, the implementation users have today;
- ``scipy_ive`` (vMF only): the common approach of evaluating ``scipy.special.ive`` on the host inside
  an autograd Function (as in the s-vae code), where it is finite;
- ``simsiam_cosine``: SimSiam's ``-F.cosine_similarity(p, z.detach()).mean()``, the loss without
  uncertainty — its ratio to the fused kernel is the cost of uncertainty in the loss.

Modes: ``fwd`` = the loss under ``torch.no_grad()`` (scoring, evaluation); ``fwd+bwd`` = loss and
``backward()`` with gradients reset to None (as ``zero_grad(set_to_none=True)`` leaves them).
Inputs: p, z (B, D) in the benchmark dtype, kappa (B,) float32 in [1e3, 1.1e4] (the range the
NLL optimum takes at d = 2048) — kappa comes from a float32 head in VI-SimSiam.
Every provider's loss is checked against the float64 reference once, and its relative error
is stored next to its speed (``rel_error_vs_float64``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vissiam_kernels as vk
from vissiam_kernels import reference

from _harness import InputRotation, bench_profile, device_params

OPS = {"power_spherical_loss": "power_spherical", "vmf_loss": "vmf"}
MODES = ("fwd", "fwd+bwd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SHAPES = {
    "quick": {"batches": (256,), "dims": (128, 2048), "gpu_batches": (), "small_d": ()},
    # small_d: (B, D) pairs run in float32 only, where the per-row special functions (vMF at d = 3:
    # 30 Bessel recurrence steps a row) cost more than reading the row
    "default": {"batches": (256, 512, 4096, 16384), "dims": (128, 2048), "gpu_batches": (65536,),
                "small_d": ((16384, 3),)},
}
SHAPES["full"] = SHAPES["default"]

FUSED_BACKENDS = {"cpu": ("cpu",), "cuda": ("triton", "cuda")}
COMMON_PROVIDERS = ("eager", "compiled", "simsiam_cosine")
PEER_PROVIDERS = {"power_spherical": ("power_spherical_pkg",), "vmf": ("scipy_ive",)}

SANITY_REL_ERROR = {"float32": 1e-2, "bfloat16": 1e-1}
"""A provider further than this from the float64 reference is computing something else: fail.
(The peer package computes the cosine in bfloat16 for bfloat16 inputs: ~1e-2 relative.)"""


# ---------------------------------------------------------------- parametrization
def pytest_generate_tests(metafunc):
    if metafunc.function.__name__ != "test_loss":
        return
    shapes = SHAPES[bench_profile(metafunc.config)]
    cases = []
    for device_param in device_params(metafunc.config):
        device = device_param.values[0]
        kind = torch.device(device).type
        batches = shapes["batches"] + (shapes["gpu_batches"] if kind == "cuda" else ())
        for op, distribution in OPS.items():
            providers = tuple(f"fused-{b}" for b in FUSED_BACKENDS[kind]) + COMMON_PROVIDERS
            providers += PEER_PROVIDERS[distribution]
            for mode in MODES:
                for dtype in DTYPES:
                    pairs = [(batch, dim) for dim in shapes["dims"] for batch in batches]
                    pairs += list(shapes["small_d"]) if dtype == "float32" else []
                    for batch, dim in pairs:
                        for provider in providers:
                            case_id = f"{op}-{mode}-B{batch}-D{dim}-{dtype}-{device}-{provider}"
                            cases.append(pytest.param(op, mode, batch, dim, dtype, device, provider,
                                                      marks=device_param.marks, id=case_id))
    metafunc.parametrize("op, mode, batch, dim, dtype, device, provider", cases)


# ---------------------------------------------------------------- providers
class HostLogIve(torch.autograd.Function):
    """log ive(v, z) = log(I_v(z) e^{-z}), with ``scipy.special.ive`` evaluated on the host and the
    recurrence derivative d ive / dz = ive(v - 1, z) - ive(v, z) (v + z) / z — the pattern of the s-vae
    code (Davidson et al., 2018), which is how vMF likelihoods are usually written in PyTorch.
    Kept in float64 until the log: in float32 (as s-vae returns it) ive(1023, z) underflows to 0
    for z < ~5300, and the d = 2048 loss would be inf for most of the benchmark's kappa."""

    @staticmethod
    def forward(ctx, v: float, z: torch.Tensor) -> torch.Tensor:
        import scipy.special

        z_host = z.detach().cpu().double().numpy()
        ive = scipy.special.ive(v, z_host)
        ctx.v = v
        ctx.save_for_backward(z)
        return torch.from_numpy(numpy_log(ive)).to(z)

    @staticmethod
    def backward(ctx, grad):
        import scipy.special

        (z,) = ctx.saved_tensors
        z_host = z.detach().cpu().double().numpy()
        v = ctx.v
        dlog_ive = scipy.special.ive(v - 1, z_host) / scipy.special.ive(v, z_host) - (v + z_host) / z_host
        return None, grad * torch.from_numpy(dlog_ive).to(grad)


def numpy_log(x):
    import numpy

    with numpy.errstate(divide="ignore"):
        return numpy.log(x)


def scipy_ive_vmf_nll(p, z, kappa):
    """-log C_vMF(kappa) - kappa cos(p, z) with log I_nu = log ive + kappa, as the s-vae code writes it."""
    dim = p.shape[-1]
    nu = dim / 2 - 1
    log_c = nu * torch.log(kappa) - (nu + 1) * math.log(2 * math.pi) - (HostLogIve.apply(nu, kappa) + kappa)
    cos = F.cosine_similarity(p.float(), z.detach().float(), dim=-1)
    return (-log_c - kappa * cos).mean()


def power_spherical_pkg_nll(p, z, kappa):
    from power_spherical import PowerSpherical

    mu = F.normalize(p, dim=-1)
    target = F.normalize(z.detach(), dim=-1)
    return -PowerSpherical(mu, kappa).log_prob(target).mean()


def simsiam_cosine(p, z, kappa):
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def loss_function(provider: str, distribution: str, device: torch.device, monkeypatch):
    """The callable (p, z, kappa) -> scalar loss for ``provider``; skips when it cannot run here."""
    eager = getattr(reference, f"{distribution}_nll")
    if provider.startswith("fused-"):
        backend = provider.removeprefix("fused-")
        monkeypatch.setenv("VISSIAM_BACKEND", backend)
        try:  # a backend named explicitly that cannot run raises: skip with its reason
            vk.vmf_loss(torch.ones(2, 4, device=device), torch.ones(2, 4, device=device),
                        torch.ones(2, device=device), distribution=distribution)
        except vk.BackendUnavailableError as error:
            pytest.skip(f"backend {backend} unavailable: {error}")
        return lambda p, z, kappa: vk.vmf_loss(p, z, kappa, distribution=distribution)
    if provider == "eager":
        return lambda p, z, kappa: eager(p, z.detach(), kappa)
    if provider == "compiled":
        torch.compiler.reset()  # one cache entry per test: no guard chains across shapes
        return torch.compile(lambda p, z, kappa: eager(p, z.detach(), kappa), dynamic=False)
    if provider == "power_spherical_pkg":
        pytest.importorskip("power_spherical", reason="PyPI package power-spherical is not installed "
                            "(pip install power-spherical)")
        return power_spherical_pkg_nll
    if provider == "scipy_ive":
        pytest.importorskip("scipy", reason="scipy is not installed")
        return scipy_ive_vmf_nll
    if provider == "simsiam_cosine":
        return simsiam_cosine
    raise ValueError(f"unknown provider {provider!r}")


# ---------------------------------------------------------------- inputs
def make_inputs(batch, dim, dtype, device):
    g = torch.Generator().manual_seed(0)
    p = torch.randn(batch, dim, generator=g)
    z = 0.8 * p + 0.2 * torch.randn(batch, dim, generator=g)
    kappa = 1e3 + 1e4 * torch.rand(batch, generator=g)
    return p.to(device=device, dtype=dtype), z.to(device=device, dtype=dtype), kappa.to(device)


class SharedInputs:
    """The rotation of inputs for one shape, dtype and device (copies of one random set) and the
    float64 reference losses of that set: built once and shared by the providers of a group, which
    run one after the other. Only the latest is kept."""

    _latest = {}

    def __init__(self, batch, dim, dtype, device, bytes_per_set):
        p, z, kappa = make_inputs(batch, dim, dtype, device)
        self.rotation = InputRotation(
            lambda i: (p.clone().requires_grad_(), z.clone(), kappa.clone().requires_grad_()), bytes_per_set, device
        )
        self._exact = {}

    @classmethod
    def get(cls, *key):
        if key not in cls._latest:
            cls._latest.clear()
            cls._latest[key] = cls(*key)
        return cls._latest[key]

    def exact_loss(self, distribution: str) -> torch.Tensor:
        """Mean loss of the first set in float64: the reference NLL, or SimSiam's -cos for "none"."""
        if distribution not in self._exact:
            p, z, kappa = (t.detach().double() for t in self.rotation.first())
            if distribution == "none":
                self._exact[distribution] = reference.cosine_nll(p, z)
            else:
                self._exact[distribution] = getattr(reference, f"{distribution}_nll")(p, z, kappa)
        return self._exact[distribution]


def min_bytes_moved(batch, dim, element_size, mode):
    """The least traffic any implementation needs: read p and z (and kappa); for fwd+bwd also
    write grad p (and grad kappa). Everything else can stay in registers."""
    vectors = 2 if mode == "fwd" else 3
    scalars = 1 if mode == "fwd" else 2
    return vectors * batch * dim * element_size + scalars * batch * 4


def relative_error(loss_fn, inputs, exact):
    p, z, kappa = inputs
    with torch.no_grad():
        value = loss_fn(p, z, kappa).double()
    return float(((value - exact).abs() / exact.abs().clamp_min(1e-30)).item())


# ---------------------------------------------------------------- the benchmark
def test_loss(measure, threads, monkeypatch, op, mode, batch, dim, dtype, device, provider):
    device = torch.device(device)
    distribution = OPS[op]
    torch_dtype = DTYPES[dtype]
    loss_fn = loss_function(provider, distribution, device, monkeypatch)
    element_size = torch.empty((), dtype=torch_dtype).element_size()
    min_bytes = min_bytes_moved(batch, dim, element_size, mode)
    shared = SharedInputs.get(batch, dim, torch_dtype, device, min_bytes)
    rotation = shared.rotation
    exact = shared.exact_loss("none" if provider == "simsiam_cosine" else distribution)
    rel_error = relative_error(loss_fn, rotation.first(), exact)
    if provider == "scipy_ive" and not math.isfinite(rel_error):
        pytest.skip(f"scipy.special.ive underflows at d={dim} for these kappa: the host approach has no value")
    assert rel_error < SANITY_REL_ERROR[dtype], f"{provider} is {rel_error:.2e} away from the float64 reference"

    if mode == "fwd":
        def step():
            p, z, kappa = rotation.next()
            with torch.no_grad():
                return loss_fn(p, z, kappa)
    else:
        def step():
            p, z, kappa = rotation.next()
            p.grad = None
            kappa.grad = None
            loss_fn(p, z, kappa).backward()

    warmup = 3 if provider == "compiled" or device.type == "cuda" else 2
    if provider.startswith("fused-"):
        step()
        assert vk.last_backend() == provider.removeprefix("fused-"), vk.last_backend()
    measure(
        step,
        group=f"{op} {mode} B={batch} D={dim} {dtype} {device.type}",
        provider=provider,
        device=device,
        min_bytes=min_bytes,
        warmup=warmup,
        rel_error_vs_float64=rel_error,
        input_copies=rotation.copies,
        op=op, mode=mode, batch=batch, dim=dim, dtype=dtype,
    )
