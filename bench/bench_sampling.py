"""The sampling transform of the spherical distributions (issue 13), provider against provider.

Groups ``sphere_transform <mode> B=<B> D=<D> float32 <device>``: x = H [t, s v] for loc (B, D),
t, s (B,) float64 and noise (B, D-1), through

- ``fused-cpu`` / ``fused-triton``: ``vissiam_kernels._sampling_ops.sphere_transform`` with that
  VISSIAM_BACKEND (the C++ op, or the Triton kernels on a GPU);
- ``eager``: the pure-PyTorch reference ``sampling_reference.householder_transform``, as written;
- ``compiled``: ``torch.compile(dynamic=False)`` of the same reference, compiled during warm-up;
- ``copy`` (from the fused provider's ``min_bytes``): the memory floor, the group's minimum bytes at
  the copy bandwidth of the same run.

Modes: ``fwd`` (under ``torch.no_grad()``) and ``fwd+bwd`` (x, then ``x.backward(grad_x)`` with
grad_x given, gradients to loc, t and s). Minimum bytes: fwd reads loc and the noise and writes x
(3 B D elements, the issue's floor); fwd+bwd adds reading grad_x, loc and the noise again and
writing grad_loc (7 B D elements), plus 8-byte t, s (and grad_t, grad_s) per row.

Group ``sphere_sample_parts fwd B=<B> D=<D> float32 <device>``: where the time of a power spherical
``rsample`` goes besides the Beta draw: ``fused-cpu`` (the transform alone, as above),
``torch.randn`` (drawing the (B, D-1) noise alone) and ``randn+fused`` (both, as rsample does them).
The issue's floor for the whole rsample is the transform's (write x, read loc and the noise); a
noise draw that costs more than that floor cannot be hidden by any transform kernel.

Groups ``sphere_sample <mode> B=<B> D=<D> float32 cpu``: the whole tangent step of ``rsample`` (noise
and transform) for given t, s: ``fused-cpu`` is ``_sampling_ops.sphere_sample``, the noise drawn inside
the C++ kernel (Philox4x32-10, csrc/cpu/philox_normal.inc; the backward draws it again), against
``randn+fused`` (``torch.randn`` of the (B, D-1) noise, then ``sphere_transform``, as the samplers did);
``copy`` is the issue's floor for rsample: read loc, write x (2 B D elements), and in fwd+bwd also read
grad_x, loc and write grad_loc (5 B D elements). CPU only (no Triton kernel of the seeded op yet).

Targets (bench/conftest.py TARGETS, CPU at 2 threads, D = 2048): fused-cpu within 1.5x of ``copy`` and
at least 5x ``compiled``, in both modes.
"""

from __future__ import annotations

import pytest
import torch
from _harness import InputRotation, bench_profile, device_params

from vissiam_kernels import _dispatch
from vissiam_kernels._sampling_ops import sphere_sample, sphere_transform
from vissiam_kernels.sampling_reference import householder_transform

SHAPES = {"quick": ((256, 128), (256, 2048)), "default": ((4096, 128), (4096, 2048))}
SHAPES["full"] = SHAPES["default"]
FUSED_BACKENDS = {"cpu": ("cpu",), "cuda": ("triton",)}
MODES = ("fwd", "fwd+bwd")
SANITY_ABS_ERROR = 1e-5
"""A provider further than this (max abs over x) from the float64 reference is computing something else."""


def pytest_generate_tests(metafunc):
    name = metafunc.function.__name__
    if name not in ("test_sphere_transform", "test_sample_parts", "test_sphere_sample"):
        return
    cases = []
    for device_param in device_params(metafunc.config):
        device = device_param.values[0]
        kind = torch.device(device).type
        for batch, dim in SHAPES[bench_profile(metafunc.config)]:
            if name == "test_sphere_sample":
                if kind != "cpu":
                    continue
                for mode in MODES:
                    for provider in ("fused-cpu", "randn+fused"):
                        cases.append(pytest.param(mode, batch, dim, device, provider, marks=device_param.marks,
                                                  id=f"sample-{mode}-B{batch}-D{dim}-{device}-{provider}"))
            elif name == "test_sphere_transform":
                providers = tuple(f"fused-{b}" for b in FUSED_BACKENDS[kind]) + ("eager", "compiled")
                for mode in MODES:
                    for provider in providers:
                        cases.append(pytest.param(mode, batch, dim, device, provider, marks=device_param.marks,
                                                  id=f"{mode}-B{batch}-D{dim}-{device}-{provider}"))
            else:
                providers = (f"fused-{FUSED_BACKENDS[kind][0]}", "torch.randn", "randn+fused")
                for provider in providers:
                    cases.append(pytest.param("fwd", batch, dim, device, provider, marks=device_param.marks,
                                              id=f"parts-B{batch}-D{dim}-{device}-{provider}"))
    metafunc.parametrize("mode, batch, dim, device, provider", cases)


def make_inputs(batch, dim, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, dim, generator=g)
    theta = torch.rand(batch, generator=g, dtype=torch.float64) * torch.pi
    noise = torch.randn(batch, dim - 1, generator=g)
    grad_x = torch.randn(batch, dim, generator=g)
    return (loc.to(device), theta.cos().to(device), theta.sin().to(device), noise.to(device), grad_x.to(device))


def transform_function(provider: str, device: torch.device, monkeypatch):
    if provider.startswith("fused-"):
        backend = provider.removeprefix("fused-")
        monkeypatch.setenv("VISSIAM_BACKEND", backend)
        loc, t, s, noise, _ = make_inputs(2, 4, device)
        try:
            sphere_transform(loc, t, s, noise)
        except _dispatch.BackendUnavailableError as error:
            pytest.skip(f"backend {backend} unavailable: {error}")
        return sphere_transform
    if provider == "eager":
        return householder_transform
    if provider == "compiled":
        torch.compiler.reset()
        return torch.compile(householder_transform, dynamic=False)
    raise ValueError(f"unknown provider {provider!r}")


def min_bytes_moved(batch, dim, mode, element_size=4):
    if mode == "fwd":
        return (3 * dim - 1) * batch * element_size + 2 * 8 * batch
    return (7 * dim - 2) * batch * element_size + 4 * 8 * batch


def test_sphere_transform(measure, threads, monkeypatch, mode, batch, dim, device, provider):
    device = torch.device(device)
    transform = transform_function(provider, device, monkeypatch)
    min_bytes = min_bytes_moved(batch, dim, mode)
    base = make_inputs(batch, dim, device)
    rotation = InputRotation(
        lambda i: (base[0].clone().requires_grad_(), base[1].clone().requires_grad_(), base[2].clone().requires_grad_(),
                   base[3].clone(), base[4].clone()),
        min_bytes, device)
    loc, t, s, noise, _ = rotation.first()
    with torch.no_grad():
        error = (transform(loc, t, s, noise).double() - householder_transform(
            loc.double(), t, s, noise.double())).abs().max().item()
    assert error < SANITY_ABS_ERROR, f"{provider} is {error:.2e} away from the float64 reference"

    if mode == "fwd":
        def step():
            loc, t, s, noise, _ = rotation.next()
            with torch.no_grad():
                return transform(loc, t, s, noise)
    else:
        def step():
            loc, t, s, noise, grad_x = rotation.next()
            loc.grad = t.grad = s.grad = None
            transform(loc, t, s, noise).backward(grad_x)

    if provider.startswith("fused-"):
        step()
        assert _dispatch.last_backend() == provider.removeprefix("fused-"), _dispatch.last_backend()
    measure(step, group=f"sphere_transform {mode} B={batch} D={dim} float32 {device.type}", provider=provider,
            device=device, min_bytes=min_bytes, warmup=3 if provider == "compiled" else 2,
            abs_error_vs_float64=error, input_copies=rotation.copies, op="sphere_transform", mode=mode,
            batch=batch, dim=dim, dtype="float32")


def test_sample_parts(measure, threads, monkeypatch, mode, batch, dim, device, provider):
    device = torch.device(device)
    fused = transform_function(f"fused-{FUSED_BACKENDS[device.type][0]}", device, monkeypatch)
    min_bytes = min_bytes_moved(batch, dim, "fwd")
    base = make_inputs(batch, dim, device)
    rotation = InputRotation(lambda i: tuple(x.clone() for x in base[:4]), min_bytes, device)
    generator = torch.Generator(device=device).manual_seed(0)

    def noise_draw():
        return torch.randn(batch, dim - 1, device=device, generator=generator)

    if provider == "torch.randn":
        step = noise_draw
    elif provider == "randn+fused":
        def step():
            loc, t, s, _ = rotation.next()
            return fused(loc, t, s, noise_draw())
    else:
        def step():
            loc, t, s, noise = rotation.next()
            return fused(loc, t, s, noise)

    with torch.no_grad():
        measure(step, group=f"sphere_sample_parts fwd B={batch} D={dim} float32 {device.type}", provider=provider,
                device=device, min_bytes=min_bytes if provider.startswith("fused-") else None,
                input_copies=rotation.copies, op="sphere_sample_parts", mode=mode, batch=batch, dim=dim,
                dtype="float32")


def min_bytes_sampled(batch, dim, mode, element_size=4):
    """rsample's floor: read loc, write x (fwd); also read grad_x, loc and write grad_loc (fwd+bwd)."""
    if mode == "fwd":
        return 2 * dim * batch * element_size + 2 * 8 * batch
    return 5 * dim * batch * element_size + 4 * 8 * batch


def test_sphere_sample(measure, threads, monkeypatch, mode, batch, dim, device, provider):
    device = torch.device(device)
    fused = transform_function("fused-cpu", device, monkeypatch)
    min_bytes = min_bytes_sampled(batch, dim, mode)
    base = make_inputs(batch, dim, device)
    rotation = InputRotation(
        lambda i: (base[0].clone().requires_grad_(), base[1].clone().requires_grad_(), base[2].clone().requires_grad_(),
                   base[4].clone()),
        min_bytes, device)
    generator = torch.Generator(device=device).manual_seed(0)
    if provider == "fused-cpu":
        def sample(loc, t, s):
            return sphere_sample(loc, t, s, generator=generator)
    else:
        def sample(loc, t, s):
            return fused(loc, t, s, torch.randn(batch, dim - 1, device=device, generator=generator))

    loc, t, s, _ = rotation.first()
    with torch.no_grad():  # the draw is x = H [t, s v] of some noise: on the sphere, t = mu.x
        x = sample(loc, t, s).double()
        mu = torch.nn.functional.normalize(loc.double(), dim=-1)
        error = max((x.norm(dim=-1) - 1).abs().max().item(), ((mu * x).sum(-1) - t).abs().max().item())
    assert error < SANITY_ABS_ERROR, f"{provider}: {error:.2e} off the sphere or the angle"

    if mode == "fwd":
        def step():
            loc, t, s, _ = rotation.next()
            with torch.no_grad():
                return sample(loc, t, s)
    else:
        def step():
            loc, t, s, grad_x = rotation.next()
            loc.grad = t.grad = s.grad = None
            sample(loc, t, s).backward(grad_x)

    step()
    assert _dispatch.last_backend() == "cpu", _dispatch.last_backend()
    measure(step, group=f"sphere_sample {mode} B={batch} D={dim} float32 {device.type}", provider=provider,
            device=device, min_bytes=min_bytes if provider == "fused-cpu" else None, warmup=2,
            abs_error_vs_float64=error, input_copies=rotation.copies, op="sphere_sample", mode=mode, batch=batch,
            dim=dim, dtype="float32")
