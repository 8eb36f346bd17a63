"""End to end: one training step of VI-SimSiam against SimSiam with the same backbone.

The cost of uncertainty as a user sees it: forward of both views, loss, backward, SGD step.
Providers (comparison group ``train_step <backbone> N=<batch> <size>px D=<dim> <precision> <device>``):

- ``simsiam``: ``vi_simsiam.builder.VISimSiam(distribution="none")`` — SimSiam's -cos loss, no kappa head;
- ``vi_simsiam``: ``distribution="power_spherical"`` — plus the kappa head and the fused NLL (auto backend);
- ``vi_simsiam_eager_loss``: the same model with ``VISSIAM_BACKEND=reference``, i.e. the NLL in plain
  PyTorch: what the fused kernel saves at the step level.

``test_train_step_paired`` times ``simsiam`` and ``vi_simsiam`` again, alternating their steps in one
benchmark (ABBA order), in the group ``train_step_paired ...``: timed one after the other, the two
models' medians moved by +-5% between runs here (other load, drift), more than the 2% to be
resolved; alternated, both see the same conditions. Goal (issue 7): in that paired group,
vi_simsiam / simsiam <= 1.02 (checked in bench/conftest.py TARGETS).

The kappa head is the model's default (``VISimSiam(kappa_hidden_dim=32)``, the width every preset
trains with; see ``builder.KappaHead``). With the digits CNN the MLP heads at D = 2048 are most of
the step, so the kappa head's width decides the ratio there. Paired ratios vi_simsiam / simsiam,
AMD EPYC (family 25, Zen 3; /proc/cpuinfo names no model number), 2 vCPUs, 2 threads, load average
1-2 from other work, each value one run (default profile, 12 pairs; "full": 30 pairs):

    kappa head width   digits CNN N=256                             ResNet-18 CIFAR N=32
    512 (before)       1.052 1.062 1.078 1.081(full) 1.151          0.956(full) 0.998 1.018
    32 (now)           0.961 0.980 0.995 1.018 1.022(full) 1.046    0.941 0.995 1.004(full) 1.036

The spread between runs (+-4%) is the machine's load, not the model: the head's cost by itself
(minimum of many calls, both views, fwd+bwd + SGD update) is 37 ms at width 512, 10 ms at 64 and
6.5 ms at 32 in a 480-650 ms digits step (+1% at 32), and 2-12 ms in a 2.6-2.9 s ResNet-18 step.
Models are built from one seed, so the shared parts start with the same weights; inputs are random
images of the backbone's size (the step's cost does not depend on their content).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import statistics
import time

from _harness import bench_profile, device_params, synchronize

PROVIDERS = {
    "simsiam": ("none", None),
    "vi_simsiam": ("power_spherical", None),
    "vi_simsiam_eager_loss": ("power_spherical", "reference"),
}

# (backbone, in_channels, batch, image size, precision) per profile and device type.
CONFIGS = {
    "quick": {"cpu": [("digits_cnn", 1, 32, 8, "float32")],
              "cuda": [("resnet18_cifar", 3, 128, 32, "bfloat16")]},
    "default": {"cpu": [("digits_cnn", 1, 256, 8, "float32"), ("resnet18_cifar", 3, 32, 32, "float32")],
                "cuda": [("resnet18_cifar", 3, 512, 32, "bfloat16"), ("resnet50", 3, 64, 224, "bfloat16")]},
    "full": {"cpu": [("digits_cnn", 1, 256, 8, "float32"), ("resnet18_cifar", 3, 32, 32, "float32")],
             "cuda": [("resnet18_cifar", 3, 512, 32, "bfloat16"), ("resnet50", 3, 64, 224, "bfloat16"),
                      ("resnet50", 3, 64, 224, "float32")]},
}
DIM, PRED_DIM, PROJ_HIDDEN_DIM, PROJ_LAYERS = 2048, 512, 2048, 3  # SimSiam's ImageNet heads


# Alternated pairs of steps in test_train_step_paired, per profile.
PAIRED_ROUNDS = {"quick": 1, "default": 12, "full": 30}


def pytest_generate_tests(metafunc):
    name = metafunc.function.__name__
    if name not in ("test_train_step", "test_train_step_paired"):
        return
    configs = CONFIGS[bench_profile(metafunc.config)]
    providers = PROVIDERS if name == "test_train_step" else (None,)
    cases = []
    for device_param in device_params(metafunc.config):
        device = device_param.values[0]
        for backbone, channels, batch, size, precision in configs[torch.device(device).type]:
            for provider in providers:
                case_id = f"{backbone}-N{batch}-{size}px-{precision}-{device}" + (f"-{provider}" if provider else "")
                values = (backbone, channels, batch, size, precision, device) + ((provider,) if provider else ())
                cases.append(pytest.param(*values, marks=device_param.marks, id=case_id))
    arguments = "backbone, channels, batch, size, precision, device" + (", provider" if name == "test_train_step" else "")
    metafunc.parametrize(arguments, cases)


def build(backbone: str, channels: int, distribution: str, device: torch.device):
    builder = pytest.importorskip("vi_simsiam.builder", reason="vi_simsiam (the model package) is not importable")
    backbones = pytest.importorskip("vi_simsiam.backbones")
    torch.manual_seed(0)
    model = builder.VISimSiam(
        backbones.build_backbone(backbone, channels),
        dim=DIM, pred_dim=PRED_DIM, proj_hidden_dim=PROJ_HIDDEN_DIM, proj_layers=PROJ_LAYERS,
        distribution=distribution,
    )
    return model.to(device).train()


def make_step(backbone, channels, batch, size, precision, device: torch.device, distribution: str):
    """One SGD step of a freshly built model on fixed random images: a closure returning the loss."""
    model = build(backbone, channels, distribution, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(1)
    x1, x2 = (torch.randn(batch, channels, size, size, generator=g).to(device) for _ in range(2))
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bfloat16"
                else contextlib.nullcontext())

    def step():
        with autocast:
            out = model(x1, x2)
            loss = model.loss(out)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def test_train_step(measure, threads, monkeypatch, backbone, channels, batch, size, precision, device, provider):
    device = torch.device(device)
    distribution, backend = PROVIDERS[provider]
    if backend:
        monkeypatch.setenv("VISSIAM_BACKEND", backend)
    step = make_step(backbone, channels, batch, size, precision, device, distribution)
    loss = measure(
        step,
        group=f"train_step {backbone} N={batch} {size}px D={DIM} {precision} {device.type}",
        provider=provider,
        device=device,
        warmup=3,
        backbone=backbone, batch=batch, image_size=size, dim=DIM, precision=precision,
    )
    assert torch.isfinite(loss).item(), f"{provider}: non-finite loss {loss.item()}"


def test_train_step_paired(benchmark, threads, request, backbone, channels, batch, size, precision, device):
    """SimSiam and VI-SimSiam steps alternated (ABBA...): each model's median step time over the same
    period, reported as ``paired_medians`` (bench/_harness.provider_medians)."""
    device = torch.device(device)
    steps = {name: make_step(backbone, channels, batch, size, precision, device, PROVIDERS[name][0])
             for name in ("simsiam", "vi_simsiam")}
    for _ in range(3):
        for step in steps.values():
            step()
    synchronize(device)
    times = {name: [] for name in steps}
    order = list(steps)
    losses = []

    def timed_pair():
        for name in order:
            start = time.perf_counter()
            losses.append(steps[name]())
            synchronize(device)
            times[name].append(time.perf_counter() - start)
        order.reverse()

    group = f"train_step_paired {backbone} N={batch} {size}px D={DIM} {precision} {device.type}"
    benchmark.group = group
    rounds = PAIRED_ROUNDS[bench_profile(request.config)]
    benchmark.pedantic(timed_pair, rounds=rounds, iterations=1)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    benchmark.extra_info.update(
        comparison=group, device=str(device), paired_medians=medians, pairs=rounds,
        threads=torch.get_num_threads(), backbone=backbone, batch=batch, image_size=size, dim=DIM,
        precision=precision,
    )
    assert all(torch.isfinite(loss).item() for loss in losses)
