"""vi_simsiam building blocks: model shapes, the kappa head's range, data order, augmentations, kNN, config."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import vissiam_kernels as vk
from vi_simsiam import ConfigError, KappaHead, VISimSiam, build_model, resolve
from vi_simsiam.augmentations import DigitsAugmentation
from vi_simsiam.backbones import DigitsCNN, build_backbone
from vi_simsiam.data import ArrayImageDataset, GlobalBatchSampler, TwoViewDataset, load_digits_split
from vi_simsiam.distributed import CPUSyncBatchNorm, convert_sync_batchnorm
from vi_simsiam.knn import knn_predict


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------------------- model
@pytest.mark.parametrize(
    "backbone, image, feature_dim, proj_layers",
    [("digits_cnn", (1, 8, 8), 128, 2), ("resnet18_cifar", (3, 32, 32), 512, 2), ("resnet50", (3, 32, 32), 2048, 3)],
)
def test_model_shapes(backbone, image, feature_dim, proj_layers):
    dim, pred_dim = 64, 16
    model = VISimSiam(
        build_backbone(backbone, image[0]),
        dim=dim,
        pred_dim=pred_dim,
        proj_hidden_dim=32,
        proj_layers=proj_layers,
        kappa_hidden_dim=8,
    )
    x1, x2 = torch.randn(4, *image), torch.randn(4, *image)
    out = model(x1, x2)
    assert model.encoder.feature_dim == feature_dim and out.f1.shape == (4, feature_dim)
    for name in ("p1", "p2", "z1", "z2"):
        assert getattr(out, name).shape == (4, dim), name
    assert out.kappa1.shape == (4,) and out.kappa2.shape == (4,)
    assert (out.kappa1 >= model.kappa_head.kappa_min).all()
    # SimSiam's projector: Linear+BN(affine=False) at the end; 2 or 3 Linear layers.
    linears = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert len(linears) == proj_layers and not model.projector[-1].affine
    assert model.predictor[0].out_features == pred_dim and model.predictor[-1].out_features == dim
    loss = model.loss(out)
    assert loss.dtype == torch.float32 and loss.ndim == 0 and torch.isfinite(loss)
    features, kappa = model.eval().embed(x1)
    assert features.shape == (4, feature_dim) and kappa.shape == (4,)


def test_cifar_stem_keeps_resolution():
    net = build_backbone("resnet18_cifar")
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)


def test_loss_is_the_kernel_call_and_gradients_reach_the_kappa_head():
    model = VISimSiam(DigitsCNN(), dim=32, pred_dim=8, proj_hidden_dim=32, proj_layers=2, kappa_hidden_dim=8)
    out = model(torch.rand(6, 1, 8, 8), torch.rand(6, 1, 8, 8))
    expected = vk.vi_simsiam_loss(out.p1, out.p2, out.z1, out.z2, out.kappa1, out.kappa2)
    loss = model.loss(out)
    assert torch.equal(loss, expected)
    loss.backward()
    assert model.kappa_head.mlp[-1].bias.grad.abs() > 0
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_distribution_none_is_simsiam_without_kappa_head():
    model = VISimSiam(DigitsCNN(), dim=32, pred_dim=8, proj_hidden_dim=32, proj_layers=2, distribution="none")
    assert model.kappa_head is None
    out = model(torch.rand(6, 1, 8, 8), torch.rand(6, 1, 8, 8))
    assert out.kappa1 is None
    simsiam = -0.5 * (
        F.cosine_similarity(out.p1, out.z2.detach()).mean() + F.cosine_similarity(out.p2, out.z1.detach()).mean()
    )
    torch.testing.assert_close(model.loss(out), simsiam, rtol=1e-5, atol=1e-6)
    assert model.embed(torch.rand(3, 1, 8, 8))[1] is None


def test_vmf_and_kl_weight_go_through_the_same_call():
    torch.manual_seed(0)
    x1, x2 = torch.rand(6, 1, 8, 8), torch.rand(6, 1, 8, 8)
    losses = {}
    for distribution, kl_weight in (("vmf", 0.0), ("power_spherical", 0.0), ("power_spherical", 0.5)):
        torch.manual_seed(1)
        model = VISimSiam(
            DigitsCNN(),
            dim=32,
            pred_dim=8,
            proj_hidden_dim=32,
            proj_layers=2,
            kappa_hidden_dim=8,
            distribution=distribution,
            kl_weight=kl_weight,
        )
        out = model(x1, x2)
        loss = model.loss(out)
        loss.backward()
        assert torch.isfinite(loss) and model.kappa_head.mlp[-1].bias.grad is not None
        losses[distribution, kl_weight] = loss.item()
        if kl_weight:
            kl = 0.5 * (vk.power_spherical_kl_uniform(out.kappa1, 32) + vk.power_spherical_kl_uniform(out.kappa2, 32))
            assert loss.item() == pytest.approx(losses["power_spherical", 0.0] + kl_weight * kl.mean().item(), rel=1e-5)
    assert losses["vmf", 0.0] != losses["power_spherical", 0.0]


def test_kappa_head_can_read_the_backbone_feature():
    model = VISimSiam(
        DigitsCNN(), dim=32, pred_dim=8, proj_hidden_dim=32, proj_layers=2, kappa_hidden_dim=8, kappa_input="backbone"
    )
    assert model.kappa_head.mlp[0].in_features == model.encoder.feature_dim == 128
    out = model(torch.rand(6, 1, 8, 8), torch.rand(6, 1, 8, 8))
    model.loss(out).backward()
    assert out.kappa1.shape == (6,) and model.kappa_head.mlp[0].weight.grad is not None


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="distribution"):
        VISimSiam(DigitsCNN(), distribution="gaussian")
    with pytest.raises(ValueError, match="kappa_input"):
        VISimSiam(DigitsCNN(), kappa_input="predictor")
    with pytest.raises(ValueError, match="kl_weight"):
        VISimSiam(DigitsCNN(), distribution="none", kl_weight=0.1)


# ---------------------------------------------------------------------------- kappa head
def test_kappa_head_spans_the_power_spherical_optimum_range_at_d_2048():
    """kappa = kappa_min + (d-1) softplus(u): the last bias alone puts kappa anywhere in 1e-2 .. 1e5+."""
    d = 2048
    head = KappaHead(in_dim=16, dim=d, hidden_dim=8, kappa_min=1e-2).eval()
    torch.nn.init.zeros_(head.mlp[-1].weight)
    x = torch.randn(5, 16)
    for target in (1e-1, 1e2, 1e4, 1e5, 3e5):
        r = (target - head.kappa_min) / (d - 1)
        head.mlp[-1].bias.data.fill_(math.log(math.expm1(r)))  # softplus^-1
        torch.testing.assert_close(head(x), torch.full((5,), target), rtol=1e-4, atol=1e-4)
    head.mlp[-1].bias.data.fill_(-60.0)
    assert torch.allclose(head(x), torch.full((5,), head.kappa_min))


def test_kappa_optimum_matches_the_head_scale():
    """The NLL optimum kappa* ~ (d-1) c/(1-c): the head's natural unit (d-1) is the right one at every d."""
    for d, c in ((64, 0.5), (2048, 0.9), (2048, 0.99)):
        kappa = torch.logspace(-1, 7, 4001, dtype=torch.float64)
        mu = torch.zeros(kappa.numel(), d, dtype=torch.float64)
        mu[:, 0] = 1
        target = torch.zeros_like(mu)
        target[:, 0], target[:, 1] = c, math.sqrt(1 - c * c)
        nll = vk.power_spherical_nll(mu, target, kappa, reduction="none")
        best = kappa[nll.argmin()].item()
        assert best == pytest.approx((d - 1) * c / (1 - c), rel=0.05)


def test_kappa_head_step_size_does_not_grow_with_dimension():
    """With lr_scale = 1/(d-1) one SGD step moves u by O(lr) at d = 64 and at d = 2048 alike."""
    steps = {}
    for d in (64, 2048):
        torch.manual_seed(0)
        head = KappaHead(in_dim=16, dim=d, hidden_dim=8)
        x = torch.randn(32, 16)
        p = torch.randn(32, d)
        z = p + 0.5 * torch.randn(32, d)  # cos ~ 0.9
        kappa = head(x)
        loss = vk.power_spherical_loss(p, z, kappa)
        loss.backward()
        steps[d] = head.mlp[-1].bias.grad.abs().item() * head.lr_scale
    assert 0.2 < steps[64] / steps[2048] < 5
    assert steps[2048] < 1.0


# ---------------------------------------------------------------------------- data
def test_digits_split_is_fixed_and_stratified():
    (xtr, ytr), (xte, yte) = load_digits_split()
    assert xtr.shape[1:] == (1, 8, 8) and len(xtr) + len(xte) == 1797 and len(xte) == 450
    assert 0.0 <= xtr.min() and xtr.max() <= 1.0
    (xtr2, _), _ = load_digits_split()
    assert torch.equal(xtr, xtr2)
    assert set(yte.tolist()) == set(range(10))


def test_two_views_are_a_function_of_seed_epoch_index():
    images = torch.rand(10, 1, 8, 8)
    data = TwoViewDataset(ArrayImageDataset(images, torch.zeros(10)), DigitsAugmentation(), seed=3)
    state = torch.get_rng_state()
    a1, a2 = data[(0, 4)]
    assert torch.equal(torch.get_rng_state(), state), "the caller's random stream must be untouched"
    b1, b2 = data[(0, 4)]
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2), "the two views differ"
    c1, _ = data[(1, 4)]
    assert not torch.equal(a1, c1), "a new epoch gives new views"
    assert a1.shape == (1, 8, 8)


def test_global_batches_are_the_same_for_any_world_size():
    one = GlobalBatchSampler(100, 16, world_size=1, rank=0, seed=5)
    two = [GlobalBatchSampler(100, 16, world_size=2, rank=r, seed=5) for r in range(2)]
    for sampler in (one, *two):
        sampler.set_epoch(3)
    assert len(one) == 100 // 16
    for whole, half0, half1 in zip(one, *two):
        assert len(half0) == len(half1) == 8
        assert whole == half0 + half1
    # resuming at batch 2 yields exactly the remaining batches
    full = list(one)
    one.set_epoch(3, start_batch=2)
    assert list(one) == full[2:] and len(one) == len(full) - 2
    one.set_epoch(4)
    assert list(one) != full


def test_batch_larger_than_data_set_is_a_config_error():
    with pytest.raises(ConfigError, match="larger than the data set"):
        GlobalBatchSampler(100, 128)
    with pytest.raises(ConfigError, match="divisible"):
        GlobalBatchSampler(100, 15, world_size=2)


# ---------------------------------------------------------------------------- kNN, sync BN, config
def test_knn_toy_case():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    queries = torch.tensor([[1.0, 0.05], [0.05, 1.0], [1.0, 1.0]])
    predictions, scores = knn_predict(bank, labels, queries, num_classes=2, k=2, temperature=0.1)
    assert predictions[:2].tolist() == [0, 1]
    torch.testing.assert_close(scores.sum(1), torch.ones(3))
    # the tie-breaking query sees one neighbour of each class at equal similarity
    _, scores = knn_predict(bank, labels, queries[2:], num_classes=2, k=4, temperature=0.1)
    torch.testing.assert_close(scores[0, 0], scores[0, 1])


def test_cpu_sync_batchnorm_is_batchnorm_in_one_process():
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 6),
        torch.nn.BatchNorm1d(6),
        torch.nn.ReLU(),
        torch.nn.Linear(6, 6),
        torch.nn.BatchNorm1d(6, affine=False),
    )
    parameters = [id(p) for p in model.parameters()]
    x = torch.randn(8, 4)
    expected = copy.deepcopy(model)(x)
    converted = convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(converted[1], CPUSyncBatchNorm) and isinstance(converted[4], CPUSyncBatchNorm)
    # the same Parameter objects: an optimizer made before the conversion still trains them
    assert [id(p) for p in converted.parameters()] == parameters
    torch.testing.assert_close(converted(x), expected)


def test_presets_and_config_errors():
    cfg = resolve("cifar10", epochs=2)
    assert cfg.backbone == "resnet18_cifar" and cfg.proj_layers == 2 and cfg.epochs == 2 and cfg.batch_size == 512
    assert resolve("imagefolder").proj_layers == 3 and resolve("cifar100").dataset == "cifar100"
    assert resolve().dataset == "digits"
    with pytest.raises(ConfigError, match="unknown preset 'mnist'"):
        resolve("mnist")
    with pytest.raises(ConfigError, match="distribution"):
        resolve(distribution="gauss")
    with pytest.raises(ConfigError, match="kl-weight"):
        resolve(distribution="none", kl_weight=1.0)
    model = build_model(resolve())
    assert model.dim == 256 and model.kappa_head is not None
