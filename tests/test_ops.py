"""The custom ops: opcheck, torch.compile without graph breaks, autocast, and the dispatch point."""

from __future__ import annotations

import warnings

import pytest
import torch

import vissiam_kernels as vk
from vissiam_kernels import _dispatch, _extension

ops = torch.ops.vissiam_kernels


@pytest.fixture(scope="module", autouse=True)
def loaded():
    _extension.load_cpu_library()


def sample_views(dtype=torch.float64, requires_grad=True):
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_(requires_grad)  # noqa: E731
    mu = [mk(3, 5), mk(3, 5)]
    target = [mk(3, 5), mk(3, 5)]
    kappa = [(torch.rand(3, generator=g, dtype=dtype) * 9).requires_grad_(requires_grad) for _ in range(2)]
    return mu, target, kappa


@pytest.mark.parametrize("family", [0, 1, 2])
def test_opcheck_spherical_nll(family):
    mu, target, kappa = sample_views()
    torch.library.opcheck(ops.spherical_nll.default, (mu, target, [] if family == 0 else kappa, family))


def test_opcheck_scaled_row_combination():
    mu, target, _ = sample_views(requires_grad=False)
    coefficients = [torch.randn(6, dtype=torch.float64) for _ in range(3)]
    torch.library.opcheck(ops.scaled_row_combination.default, (*coefficients, mu, target))


@pytest.mark.parametrize("quantity", [0, 1, 3, 4])
@pytest.mark.parametrize("family", [1, 2])
def test_opcheck_normalizer_quantity(family, quantity):
    kappa = (torch.rand(2, 3, dtype=torch.float64) * 20).requires_grad_()
    torch.library.opcheck(ops.normalizer_quantity.default, (kappa, 7, family, quantity))


def test_compile_fullgraph_matches_eager(use_backend):
    use_backend("cpu")
    torch._dynamo.reset()

    def step(p1, p2, z1, z2, k1, k2):
        return vk.vi_simsiam_loss(p1, p2, z1, z2, k1, k2, kl_weight=0.01)

    compiled = torch.compile(step, fullgraph=True)
    args = [torch.randn(8, 64, requires_grad=i < 2) for i in range(4)]
    kappas = [(torch.rand(8) * 100).requires_grad_() for _ in range(2)]
    eager = step(*args, *kappas)
    grads_eager = torch.autograd.grad(eager, [args[0], args[1], *kappas])
    out = compiled(*args, *kappas)
    grads_compiled = torch.autograd.grad(out, [args[0], args[1], *kappas])
    assert torch.allclose(out, eager, rtol=1e-6)
    for a, b in zip(grads_compiled, grads_eager):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    # and the compiled graph called the fused op, not the reference
    explanation = torch._dynamo.explain(step)(*args, *kappas)
    assert explanation.graph_break_count == 0
    graph_code = "\n".join(g.code for g in explanation.graphs)
    assert "vissiam_kernels.spherical_loss" in graph_code


def test_compile_normalizers_fullgraph(use_backend):
    use_backend("cpu")
    fn = torch.compile(lambda k: vk.vmf_entropy(k, 128) + vk.power_spherical_log_normalizer(k, 128), fullgraph=True)
    kappa = torch.rand(5, dtype=torch.float64) * 1e3
    assert torch.allclose(fn(kappa), vk.vmf_entropy(kappa, 128) + vk.power_spherical_log_normalizer(kappa, 128))


def test_autocast_computes_in_float32(use_backend):
    ran = use_backend("cpu")
    linear = torch.nn.Linear(64, 64)
    x, z = torch.randn(16, 64), torch.randn(16, 64)
    kappa = torch.rand(16) * 1e3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p = linear(x)
        assert p.dtype == torch.bfloat16
        loss = vk.power_spherical_loss(p, z, kappa)
    ran()
    assert loss.dtype == torch.float32
    expected = vk.power_spherical_loss(p.float(), z, kappa)
    assert torch.allclose(loss, expected, rtol=1e-6)


# ---------------------------------------------------------------- dispatch
def test_backend_choice_is_recorded(use_backend):
    mu, target, kappa = torch.randn(2, 4), torch.randn(2, 4), torch.rand(2)
    for name in ("cpu", "reference"):
        ran = use_backend(name)
        vk.vmf_nll(mu, target, kappa)
        ran()
    use_backend("auto")
    vk.vmf_nll(mu, target, kappa)
    assert vk.last_backend() == "cpu"


def test_backends_agree(use_backend):
    mu, target, kappa = torch.randn(5, 33, dtype=torch.float64), torch.randn(5, 33, dtype=torch.float64), torch.rand(5, dtype=torch.float64)
    results = {}
    for name in ("cpu", "reference"):
        use_backend(name)
        results[name] = vk.power_spherical_nll(mu, target, kappa * 300, reduction="none")
    assert torch.allclose(results["cpu"], results["reference"], rtol=1e-12)


@pytest.mark.parametrize("name", ["cuda", "triton"])
def test_unavailable_backend_asked_for_is_an_error(use_backend, name, monkeypatch):
    use_backend(name)
    monkeypatch.setattr(_dispatch, "availability_error", lambda backend: RuntimeError("not here"))
    mu = torch.randn(2, 4)
    with pytest.raises(vk.BackendUnavailableError, match=f"VISSIAM_BACKEND={name}"):
        vk.vmf_nll(mu, mu, torch.rand(2))


def test_cpu_backend_for_other_devices_is_an_error(use_backend):
    use_backend("cpu")
    with pytest.raises(vk.BackendUnavailableError, match="runs on cpu tensors only|runs on cpu tensors"):
        _dispatch.select_backend(torch.device("meta"))


def test_unknown_backend_name_is_an_error(use_backend):
    use_backend("fastest")
    with pytest.raises(ValueError, match="VISSIAM_BACKEND must be one of"):
        vk.vmf_nll(torch.randn(2, 4), torch.randn(2, 4), torch.rand(2))


def test_auto_falls_back_to_reference_with_one_warning(use_backend, monkeypatch):
    use_backend("auto")
    monkeypatch.setattr(_dispatch, "availability_error", lambda backend: RuntimeError("compiler missing"))
    monkeypatch.setattr(_dispatch, "_decided", {})  # forget the cached decision of earlier tests
    monkeypatch.setitem(_dispatch._state, "warned", set())
    mu = torch.randn(2, 4)
    with pytest.warns(RuntimeWarning, match="using the pure-PyTorch reference.*compiler missing"):
        vk.vmf_nll(mu, mu, torch.rand(2))
    assert vk.last_backend() == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vk.vmf_nll(mu, mu, torch.rand(2))  # no second warning
