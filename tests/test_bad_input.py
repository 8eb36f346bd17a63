"""Bad input: a clear ValueError/TypeError naming the argument and what was expected, case by case."""

from __future__ import annotations

import pytest
import torch

import vissiam_kernels as vk


@pytest.fixture(autouse=True, params=["cpu", "reference"])
def backend(request, use_backend):
    use_backend(request.param)
    return request.param


def vectors(b=4, d=8, **kw):
    return torch.randn(b, d, **kw), torch.randn(b, d, **kw)


def test_shape_mismatch_between_p_and_z():
    with pytest.raises(ValueError, match=r"p and z must have the same shape .*\(4, 8\) and \(4, 9\)"):
        vk.vmf_loss(torch.randn(4, 8), torch.randn(4, 9))
    with pytest.raises(ValueError, match="mu and target must have the same shape"):
        vk.power_spherical_nll(torch.randn(4, 8), torch.randn(3, 8), torch.rand(4))


def test_kappa_of_shape_b1_is_per_row_and_never_broadcast_to_bxb():
    mu, target = vectors()
    rows = vk.vmf_nll(mu, target, torch.rand(4, 1), reduction="none")
    assert rows.shape == (4,)
    with pytest.raises(ValueError, match=r"kappa must hold one concentration per row: shape \(4,\)"):
        vk.vmf_nll(mu, target, torch.rand(1, 4))
    with pytest.raises(ValueError, match=r"kappa1 must hold one concentration per row"):
        p1, p2 = vectors()
        vk.vi_simsiam_loss(p1, p2, mu, target, torch.rand(3), torch.rand(4))


@pytest.mark.parametrize("dim", [0, 1, 1.5, "8"])
def test_dim_below_two_or_not_an_int(dim):
    error = TypeError if not isinstance(dim, int) else ValueError
    with pytest.raises(error, match="dim must be"):
        vk.power_spherical_log_normalizer(torch.rand(3), dim)


def test_vectors_of_dimension_one():
    with pytest.raises(ValueError, match="last dimension D of mu must be >= 2"):
        vk.vmf_nll(torch.randn(4, 1), torch.randn(4, 1), torch.rand(4))


@pytest.mark.parametrize("name", ["mu", "target", "kappa"])
def test_non_floating_dtypes(name):
    args = {"mu": torch.randn(4, 8), "target": torch.randn(4, 8), "kappa": torch.rand(4)}
    args[name] = args[name].to(torch.int64)
    with pytest.raises(TypeError, match=f"{name} must have a floating dtype"):
        vk.power_spherical_nll(**args)
    with pytest.raises(TypeError, match="mu must be a torch.Tensor"):
        vk.power_spherical_nll([[1.0, 2.0]], torch.randn(1, 2), torch.rand(1))


def test_inputs_on_different_devices():
    mu, target = vectors()
    with pytest.raises(ValueError, match="must be on the same device"):
        vk.vmf_nll(mu, target.to("meta"), torch.rand(4))
    with pytest.raises(ValueError, match="kappa must be on the same device"):
        vk.vmf_nll(mu, target, torch.rand(4, device="meta"))


def test_unknown_distribution_or_reduction():
    p, z = vectors()
    with pytest.raises(ValueError, match="distribution must be one of"):
        vk.vmf_loss(p, z, torch.rand(4), distribution="gaussian")
    with pytest.raises(ValueError, match="reduction must be one of"):
        vk.vmf_loss(p, z, reduction="avg")
    with pytest.raises(ValueError, match="distribution must be one of"):
        vk.VISimSiamLoss(distribution="wrapped")


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), -1e-30])
def test_negative_nan_or_infinite_kappa(bad):
    mu, target = vectors()
    kappa = torch.rand(4)
    kappa[2] = bad
    with pytest.raises(ValueError, match="kappa must be finite and >= 0"):
        vk.power_spherical_nll(mu, target, kappa)
    with pytest.raises(ValueError, match="kappa must be finite and >= 0"):
        vk.vmf_log_normalizer(kappa, 8)


def test_vi_simsiam_loss_kappa_rules():
    p1, p2 = vectors()
    z1, z2 = vectors()
    with pytest.raises(ValueError, match="needs kappa1 and kappa2"):
        vk.vi_simsiam_loss(p1, p2, z1, z2, torch.rand(4))
    with pytest.raises(ValueError, match="takes no kappa"):
        vk.vi_simsiam_loss(p1, p2, z1, z2, torch.rand(4), torch.rand(4), distribution="none")
    with pytest.raises(ValueError, match="no KL term"):
        vk.vi_simsiam_loss(p1, p2, z1, z2, distribution="none", kl_weight=0.1)
    with pytest.raises(ValueError, match="both views must have one shape"):
        vk.vi_simsiam_loss(p1, p2[:2], z1[:2], z2, distribution="none")


def test_errors_leave_the_process_usable():
    mu, target = vectors()
    with pytest.raises(ValueError):
        vk.vmf_nll(mu, target, -torch.ones(4))
    assert torch.isfinite(vk.vmf_nll(mu, target, torch.ones(4)))
