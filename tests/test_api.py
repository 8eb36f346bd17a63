"""The public API: drop-in equivalence with SimSiam, composition of the VI-SimSiam loss, reductions, dtypes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vissiam_kernels as vk
from vissiam_kernels import reference

PUBLIC_NAMES = {
    "power_spherical_log_normalizer", "vmf_log_normalizer", "power_spherical_entropy", "vmf_entropy",
    "power_spherical_kl_uniform", "vmf_kl_uniform", "power_spherical_nll", "vmf_nll", "vmf_loss",
    "power_spherical_loss", "vi_simsiam_loss", "VMFLoss", "VISimSiamLoss",
}


def test_public_api_names():
    assert PUBLIC_NAMES <= set(vk.__all__)
    for name in PUBLIC_NAMES:
        assert callable(getattr(vk, name))


@pytest.fixture(autouse=True)
def cpu_backend(use_backend):
    return use_backend("cpu")


def test_vmf_loss_without_kappa_is_simsiams_cosine_loss(cpu_backend):
    p = torch.randn(32, 128, requires_grad=True)
    z = torch.randn(32, 128, requires_grad=True)
    ours = vk.vmf_loss(p, z)
    cpu_backend()
    p2 = p.detach().clone().requires_grad_()
    expected = -F.cosine_similarity(p2, z.detach(), dim=-1).mean()
    assert torch.allclose(ours, expected, rtol=1e-6, atol=1e-7)
    ours.backward()
    expected.backward()
    assert torch.allclose(p.grad, p2.grad, rtol=1e-5, atol=1e-8)
    assert z.grad is None  # z is stop-gradient


@pytest.mark.parametrize("distribution", ["vmf", "power_spherical"])
def test_vmf_loss_with_kappa_is_the_nll_with_stop_gradient_target(distribution):
    p = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    z = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    kappa = torch.rand(8, dtype=torch.float64, requires_grad=True)
    loss = vk.vmf_loss(p, z, kappa, distribution=distribution)
    nll = vk.vmf_nll if distribution == "vmf" else vk.power_spherical_nll
    assert torch.allclose(loss, nll(p, z.detach(), kappa), rtol=1e-14)
    loss.backward()
    assert z.grad is None and p.grad is not None and kappa.grad is not None
    assert torch.equal(vk.power_spherical_loss(p, z, kappa), vk.vmf_loss(p, z, kappa, distribution="power_spherical"))


@pytest.mark.parametrize("distribution", ["power_spherical", "vmf"])
@pytest.mark.parametrize("kl_weight", [0.0, 0.25])
def test_vi_simsiam_loss_is_the_symmetrised_nll_plus_kl(distribution, kl_weight):
    g = torch.Generator().manual_seed(1)
    p1, p2, z1, z2 = (torch.randn(6, 20, generator=g, dtype=torch.float64) for _ in range(4))
    k1, k2 = (50 * torch.rand(6, 1, generator=g, dtype=torch.float64) for _ in range(2))  # (B, 1) heads
    ours = vk.vi_simsiam_loss(p1, p2, z1, z2, k1, k2, distribution=distribution, kl_weight=kl_weight)
    nll = vk.vmf_nll if distribution == "vmf" else vk.power_spherical_nll
    kl = vk.vmf_kl_uniform if distribution == "vmf" else vk.power_spherical_kl_uniform
    expected = 0.5 * (nll(p1, z2, k1.squeeze(-1)) + nll(p2, z1, k2.squeeze(-1)))
    expected = expected + kl_weight * 0.5 * (kl(k1, 20).mean() + kl(k2, 20).mean())
    assert torch.allclose(ours, expected, rtol=1e-13)
    assert torch.allclose(ours, reference.vi_simsiam_loss(p1, p2, z1, z2, k1.squeeze(-1), k2.squeeze(-1),
                                                          distribution=distribution, kl_weight=kl_weight), rtol=1e-12)
    module = vk.VISimSiamLoss(distribution=distribution, kl_weight=kl_weight)
    assert torch.equal(module(p1, p2, z1, z2, k1, k2), ours)


def test_vi_simsiam_loss_without_distribution_is_simsiam():
    p1, p2, z1, z2 = (torch.randn(5, 9) for _ in range(4))
    ours = vk.vi_simsiam_loss(p1, p2, z1, z2, distribution="none")
    expected = -0.5 * (F.cosine_similarity(p1, z2, dim=-1).mean() + F.cosine_similarity(p2, z1, dim=-1).mean())
    assert torch.allclose(ours, expected, rtol=1e-6)


def test_vi_simsiam_loss_stops_gradients_at_the_targets():
    p1, p2, z1, z2 = (torch.randn(4, 8, requires_grad=True) for _ in range(4))
    k1, k2 = (torch.rand(4, requires_grad=True) for _ in range(2))
    vk.vi_simsiam_loss(p1, p2, z1, z2, k1, k2).backward()
    assert z1.grad is None and z2.grad is None
    assert all(t.grad is not None for t in (p1, p2, k1, k2))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions(reduction):
    mu, target = torch.randn(2, 3, 7, dtype=torch.float64), torch.randn(2, 3, 7, dtype=torch.float64)
    kappa = torch.rand(2, 3, dtype=torch.float64)
    rows = vk.vmf_nll(mu, target, kappa, reduction="none")
    assert rows.shape == (2, 3)
    out = vk.vmf_nll(mu, target, kappa, reduction=reduction)
    expected = {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]
    assert torch.allclose(out, expected, rtol=1e-14)
    assert torch.equal(vk.VMFLoss(reduction=reduction)(mu, target, kappa), out)


def test_empty_batch_follows_torch_reductions():
    mu, target, kappa = torch.randn(0, 5), torch.randn(0, 5), torch.rand(0)
    assert vk.power_spherical_nll(mu, target, kappa, reduction="none").shape == (0,)
    assert vk.power_spherical_nll(mu, target, kappa, reduction="sum").item() == 0.0
    assert torch.isnan(vk.power_spherical_nll(mu, target, kappa, reduction="mean"))


def test_scalar_kappa_applies_to_every_row():
    mu, target = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    assert torch.allclose(
        vk.vmf_nll(mu, target, 3.0, reduction="none"), vk.vmf_nll(mu, target, torch.full((4,), 3.0, dtype=torch.float64), reduction="none")
    )


@pytest.mark.parametrize(
    "input_dtype, loss_dtype", [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                (torch.float32, torch.float32), (torch.float64, torch.float64)]
)
def test_loss_and_gradient_dtypes(input_dtype, loss_dtype):
    p = torch.randn(4, 32).to(input_dtype).requires_grad_()
    kappa = torch.rand(4).to(input_dtype).requires_grad_()
    loss = vk.power_spherical_loss(p, torch.randn(4, 32).to(input_dtype), kappa)
    assert loss.dtype == loss_dtype
    loss.backward()
    assert p.grad.dtype == input_dtype and kappa.grad.dtype == input_dtype


@pytest.mark.parametrize("fn", [vk.power_spherical_log_normalizer, vk.vmf_log_normalizer, vk.power_spherical_entropy,
                                vk.vmf_entropy, vk.power_spherical_kl_uniform, vk.vmf_kl_uniform])
def test_normalizer_functions_keep_kappas_shape_and_match_reference(fn):
    kappa = torch.rand(2, 3, 4, dtype=torch.float64) * 100
    out = fn(kappa, 17)
    assert out.shape == kappa.shape and out.dtype == torch.float64
    assert torch.allclose(out, getattr(reference, fn.__name__)(kappa, 17), rtol=1e-10, atol=1e-10)
    assert fn(kappa.float(), 17).dtype == torch.float32


def test_kl_to_uniform_is_zero_at_kappa_zero_and_grows():
    for fn in (vk.power_spherical_kl_uniform, vk.vmf_kl_uniform):
        kl = fn(torch.tensor([0.0, 1.0, 10.0, 100.0], dtype=torch.float64), 64)
        assert abs(kl[0].item()) < 1e-9
        assert torch.all(kl[1:] > kl[:-1])


def test_module_reprs_name_their_settings():
    assert "power_spherical" in repr(vk.VMFLoss(distribution="power_spherical"))
    assert "kl_weight=0.5" in repr(vk.VISimSiamLoss(kl_weight=0.5))
