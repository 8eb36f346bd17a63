"""The options the kappa ablation varies (issue 14, item 4): the kappa parametrizations and the head's
learning-rate scale (builder.KappaHead, config, optimization), and scripts/kappa_ablation.py's table
built from finished runs."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from vi_simsiam import config, optimization
from vi_simsiam.builder import KAPPA_PARAMETRIZATIONS, KappaHead, build_model
from vi_simsiam.data import ConfigError
from vi_simsiam.uncertainty import SUMMARY_STATISTICS

ROOT = Path(__file__).resolve().parent.parent


def _head_with_bias(parametrization: str, d: int, bias: float) -> KappaHead:
    head = KappaHead(in_dim=4, dim=d, hidden_dim=3, kappa_min=0.5, parametrization=parametrization).eval()
    torch.nn.init.zeros_(head.mlp[-1].weight)
    head.mlp[-1].bias.data.fill_(bias)
    return head


@pytest.mark.parametrize("parametrization, expected", [
    ("scaled_softplus", lambda d, u: 0.5 + (d - 1) * math.log1p(math.exp(u))),
    ("softplus", lambda d, u: 0.5 + math.log1p(math.exp(u))),
    ("scaled_exp", lambda d, u: 0.5 + (d - 1) * math.exp(u)),
])
def test_kappa_parametrizations(parametrization, expected):
    x = torch.randn(6, 4)
    for d in (16, 256):
        for u in (-4.0, 0.0, 2.5):
            kappa = _head_with_bias(parametrization, d, u)(x)
            torch.testing.assert_close(kappa, torch.full((6,), expected(d, u)), rtol=1e-5, atol=1e-5)
    # exp is clamped: a huge u gives a finite kappa
    assert torch.isfinite(_head_with_bias("scaled_exp", 256, 500.0)(x)).all()


def test_kappa_lr_scale_multiplies_the_heads_own_scale():
    assert KappaHead(4, 257, 3).lr_scale == pytest.approx(1 / 256)
    assert KappaHead(4, 257, 3, parametrization="scaled_exp", lr_multiplier=10).lr_scale == pytest.approx(10 / 256)
    assert KappaHead(4, 257, 3, parametrization="softplus", lr_multiplier=0.5).lr_scale == pytest.approx(0.5)
    with pytest.raises(ValueError, match="parametrization must be one of"):
        KappaHead(4, 8, 3, parametrization="sigmoid")
    with pytest.raises(ValueError, match="lr_multiplier must be > 0"):
        KappaHead(4, 8, 3, lr_multiplier=0.0)


def test_the_config_reaches_the_optimizer():
    cfg = config.resolve("digits", dim=33, kappa_param="softplus", kappa_lr_scale=3.0)
    model = build_model(cfg)
    assert model.kappa_head.parametrization == "softplus"
    groups = {g["name"]: g["lr"] for g in optimization.param_groups(model, cfg)}
    assert groups["kappa_head"] == pytest.approx(groups["encoder"] * 3.0)
    cfg = config.resolve("digits", dim=33, kappa_lr_scale=2.0)
    groups = {g["name"]: g["lr"] for g in optimization.param_groups(build_model(cfg), cfg)}
    assert groups["kappa_head"] == pytest.approx(groups["encoder"] * 2.0 / 32)
    assert config.Config().kappa_param in KAPPA_PARAMETRIZATIONS
    with pytest.raises(ConfigError, match="--kappa-param 'exp': must be one of scaled_softplus"):
        config.resolve("digits", kappa_param="exp")


# ---------------------------------------------------------------------------- the ablation's table
def _ablation():
    spec = importlib.util.spec_from_file_location("kappa_ablation", ROOT / "scripts" / "kappa_ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_run(path: Path, knn_top1: float, kappa_auroc: float, baseline_auroc: float):
    """A finished run as far as the table reads it: uncertainty.json with probes."""
    scores = ("kappa", "neighbour_similarity", "view_agreement", "knn_margin")
    summary = {s: {n: (kappa_auroc if n == "kappa" else baseline_auroc) for n in scores} for s in SUMMARY_STATISTICS}
    summary["linear_correctness"] = {n: float("nan") for n in scores}
    probes = {"num_wrong": {"knn": round(450 * (1 - knn_top1))}, "summary": summary,
              "augmentation": {"components": {"all": {"kappa": {"mean": [100.0, 80.0, 50.0], "spearman": -0.4}}}},
              "mixing": {"scores": {"kappa": {"spearman": -0.3}}}}
    path.mkdir(parents=True)
    (path / "uncertainty.json").write_text(json.dumps(
        {"knn_top1": knn_top1, "linear_top1": 1.0, "kappa": {"mean": 123.0}, "probes": probes}))
    (path / "eval.json").write_text("{}")
    (path / "config.json").write_text(json.dumps({"epochs": 60, "warmup_epochs": 6}))


def test_the_table_from_finished_runs(tmp_path, capsys):
    ablation = _ablation()
    runs = tmp_path / "runs"
    for seed, (top1, auroc) in enumerate([(0.98, 0.70), (0.99, 0.80), (0.97, 0.75)]):
        _fake_run(runs / f"default-seed{seed}", top1, auroc, 0.9)
        _fake_run(runs / f"vmf-seed{seed}", top1, auroc + 0.1, 0.85)  # a better kappa, the same kNN
        _fake_run(runs / f"kl_1-seed{seed}", top1 - 0.1, 0.99, 0.5)  # the best kappa of a much worse model
    _fake_run(runs / "head_128-seed0", 0.99, 0.99, 0.5)  # the best kappa, but one seed
    output = tmp_path / "table"
    assert ablation.main(["--variants", "default", "vmf", "kl_1", "head_128", "--runs-dir", str(runs), "--output", str(output),
                          "--table-only"]) == 0
    result = json.loads(output.with_suffix(".json").read_text())
    assert result["chosen"] == "vmf"  # kl_1 is left out: its kNN top-1 is 0.1 below the default's; head_128: 1 seed
    assert result["seeds"]["head_128"] == [0] and math.isnan(result["table"]["head_128"]["knn_top1"]["std"])
    default = result["table"]["default"]
    assert default["knn_top1"]["mean"] == pytest.approx(0.98) and default["knn_top1"]["std"] == pytest.approx(0.01)
    kappa = default["summary"]["mixed_vs_clean"]["kappa"]
    assert kappa["mean"] == pytest.approx(0.75) and kappa["std"] == pytest.approx(0.05) and kappa["n"] == 3
    assert default["summary"]["linear_correctness"]["kappa"]["n"] == 0  # undefined on every seed
    assert result["table"]["vmf"]["kappa_minus_best_baseline"]["ood_vs_clean"]["mean"] == pytest.approx(0.0)
    assert default["kappa_strongest_augmentation_ratio"]["mean"] == pytest.approx(0.5)
    table = output.with_suffix(".md").read_text()
    assert "| default | 0.750 ± 0.050 | 0.900 ± 0.000 |" in table and "- vmf: 0.850 ± 0.050 **(chosen)**" in table
    assert "## clean vs mixed 50/50" in table and "n/a" in table and "| head_128 | kappa head 128 wide | 1 | 60 (warmup 6) |" in table
    assert "chosen: vmf" in capsys.readouterr().out


def test_no_table_without_the_default(tmp_path):
    _fake_run(tmp_path / "vmf-seed0", 0.98, 0.8, 0.9)
    assert _ablation().main(["--variants", "vmf", "--seeds", "0", "--runs-dir", str(tmp_path), "--output",
                             str(tmp_path / "t"), "--table-only"]) == 1


def test_the_default_stays_unless_a_variant_is_ahead_by_more_than_the_spread():
    ablation = _ablation()

    def row(score, std, n=3):
        return {"knn_top1": {"mean": 0.95, "std": 0.01, "n": n}, "choice_score": {"mean": score, "std": std, "n": n}}

    assert ablation.choose({"default": row(0.77, 0.04), "backbone_input": row(0.79, 0.02)}) == "default"
    assert ablation.choose({"default": row(0.77, 0.01), "backbone_input": row(0.79, 0.01)}) == "backbone_input"
    assert ablation.choose({"default": row(0.77, 0.01), "vmf": row(0.90, float("nan"), n=1)}) == "default"
