"""vi_simsiam evaluation: kappa binning, kappa vs correctness, corruptions, linear probe, and the three commands."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from vi_simsiam import cli
from vi_simsiam import uncertainty as U
from vi_simsiam.linear import linear_probe

TINY = [
    "--dim",
    "32",
    "--pred-dim",
    "16",
    "--proj-hidden-dim",
    "32",
    "--kappa-hidden-dim",
    "16",
    "--threads",
    "1",
    "--epochs",
    "2",
    "--warmup-epochs",
    "1",
    "--batch-size",
    "128",
    "--no-evaluate",
]


# ---------------------------------------------------------------------------- binning and statistics
def test_quantile_bins_known_answer():
    torch.manual_seed(0)
    kappa = torch.randperm(100).double()  # values 0..99 in random order
    correct = kappa >= 50
    rows = U.accuracy_by_kappa_bin(kappa, correct, bins=10)
    assert [r["count"] for r in rows] == [10] * 10
    assert [r["accuracy"] for r in rows] == [0.0] * 5 + [1.0] * 5
    assert [(r["kappa_min"], r["kappa_max"]) for r in rows] == [(10.0 * b, 10.0 * b + 9) for b in range(10)]
    assert rows[3]["kappa_mean"] == 34.5
    assert U.decile_contrast(rows) == {"bottom_bin_accuracy": 0.0, "top_bin_accuracy": 1.0}


def test_quantile_bins_equal_counts_with_ties_and_uneven_sizes():
    index = U.quantile_bins(torch.ones(25), bins=10)  # all tied (e.g. every kappa at kappa_min)
    assert torch.bincount(index).tolist() == [3, 2, 3, 2, 3, 2, 3, 2, 3, 2]
    rows = U.accuracy_by_kappa_bin(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([True, False, True]), bins=3)
    assert [(r["kappa_mean"], r["accuracy"]) for r in rows] == [(1.0, 0.0), (2.0, 1.0), (3.0, 1.0)]


def test_kappa_predicts_correctness_uses_sklearn_and_scipy():
    kappa = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    perfect = U.kappa_predicts_correctness(kappa, torch.tensor([0, 0, 0, 1, 1, 1]).bool())
    assert perfect["auroc"] == 1.0 and perfect["spearman"] == pytest.approx(
        math.sqrt(27 / 35)
    )  # ranks 1..6 against tied ranks 2,2,2,5,5,5
    assert perfect["accuracy"] == 0.5 and perfect["num_wrong"] == 3
    reversed_ = U.kappa_predicts_correctness(kappa, torch.tensor([1, 1, 1, 0, 0, 0]).bool())
    assert reversed_["auroc"] == 0.0 and reversed_["spearman"] < 0
    mixed = U.kappa_predicts_correctness(kappa, torch.tensor([0, 1, 0, 1, 1, 1]).bool())
    assert mixed["auroc"] == pytest.approx(7 / 8)  # 7 of the 8 (wrong, right) pairs are ordered
    undefined = U.kappa_predicts_correctness(kappa, torch.ones(6, dtype=torch.bool))
    assert math.isnan(undefined["auroc"]) and undefined["accuracy"] == 1.0


# ---------------------------------------------------------------------------- corruptions
def test_corruptions_do_what_they_say():
    images = torch.ones(2, 1, 8, 8)
    occluded = U.occlude(images, 0.25)  # a centred 4x4 square
    assert (occluded == 0).sum().item() == 2 * 16 and occluded[0, 0, 2:6, 2:6].eq(0).all()
    assert torch.equal(U.occlude(images, 0.0), images)
    pattern = torch.zeros(1, 1, 8, 8)
    pattern[..., 2:6, 2:6] = 1
    cropped = U.crop(pattern, 0.5)  # the central 4x4 (all ones) blown up to 8x8
    torch.testing.assert_close(cropped, torch.ones(1, 1, 8, 8))
    blurred = U.blur(pattern, 0.12)
    assert blurred.max() < 1 and blurred[..., 0, 0] > 0
    noisy = U.noise(images * 0.5, 0.3, seed=1)
    assert torch.equal(noisy, U.noise(images * 0.5, 0.3, seed=1)) and 0 <= noisy.min() and noisy.max() <= 1
    assert set(U.CORRUPTIONS) == {"crop", "blur", "noise", "occlusion"}


def test_kappa_falls_under_a_controlled_corruption():
    """A stand-in 'model' whose kappa is the image's ink (occlusion) or its edge energy (blur):
    the study must then report kappa falling level by level."""
    torch.manual_seed(0)
    images = (torch.rand(40, 1, 8, 8) > 0.5).float()

    def ink(batch):
        return batch.sum(dim=(1, 2, 3))

    def edges(batch):
        return (batch[..., 1:, :] - batch[..., :-1, :]).abs().sum(dim=(1, 2, 3)) + (
            batch[..., 1:] - batch[..., :-1]
        ).abs().sum(dim=(1, 2, 3))

    result = U.kappa_under_corruption(ink, images, {"occlusion": U.CORRUPTIONS["occlusion"]}, batch_size=16)
    means = [lv["kappa_mean"] for lv in result["occlusion"]["levels"]]
    assert all(a > b for a, b in zip(means, means[1:])), means
    assert result["occlusion"]["falls"] and result["occlusion"]["spearman_level_kappa"] < -0.5
    assert result["occlusion"]["ratio_most_to_clean"] == pytest.approx(means[-1] / means[0])
    result = U.kappa_under_corruption(edges, images, {"blur": U.CORRUPTIONS["blur"]})
    means = [lv["kappa_mean"] for lv in result["blur"]["levels"]]
    assert all(a > b for a, b in zip(means, means[1:])), means
    # and a 'model' that ignores the image: no change is reported as none
    flat = U.kappa_under_corruption(lambda b: torch.ones(len(b)), images, {"noise": U.CORRUPTIONS["noise"]})
    assert not flat["noise"]["falls"] and flat["noise"]["ratio_most_to_clean"] == 1.0


def test_lowest_and_highest():
    low, high = U.lowest_and_highest(torch.tensor([5.0, 1.0, 9.0, 3.0]), count=2)
    assert low.tolist() == [1, 3] and high.tolist() == [2, 0]


# ---------------------------------------------------------------------------- linear probe
def test_linear_probe_separates_separable_classes():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=generator) * 4
    labels = torch.arange(300) % 3
    features = centres[labels] + torch.randn(300, 16, generator=generator)
    first = linear_probe(features[:200], labels[:200], features[200:], labels[200:], 3, epochs=20)
    again = linear_probe(features[:200], labels[:200], features[200:], labels[200:], 3, epochs=20)
    assert first["top1"] == 1.0 and torch.equal(first["probabilities"], again["probabilities"])
    assert first["predictions"].shape == (100,)


# ---------------------------------------------------------------------------- the commands
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    try:
        for distribution in ("power_spherical", "none"):
            assert (
                cli.main(["pretrain", *TINY, "--distribution", distribution, "--output-dir", str(root / distribution)])
                == 0
            )
    finally:
        torch.set_num_threads(threads)
    return root


def test_knn_and_linear_commands(tiny_runs, capsys):
    run = tiny_runs / "power_spherical"
    assert cli.main(["knn", str(run), "--k", "10", "--threads", "1"]) == 0
    knn = json.loads((run / "knn.json").read_text())
    assert knn["k"] == 10 and knn["num_test"] == 450 and 0.5 < knn["top1"] <= 1
    assert "kNN top-1 (k=10" in capsys.readouterr().out
    assert cli.main(["linear", str(run), "--linear-epochs", "5", "--threads", "1"]) == 0
    linear = json.loads((run / "linear.json").read_text())
    assert linear["epochs"] == 5 and 0.5 < linear["top1"] <= 1
    assert (run / "features.pt").is_file()


def test_uncertainty_command_writes_numbers_figures_and_report(tiny_runs, capsys):
    run = tiny_runs / "power_spherical"
    assert cli.main(["uncertainty", str(run), "--linear-epochs", "5", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "AUROC" in out and "report.md" in out
    result = json.loads((run / "uncertainty.json").read_text())
    assert len(result["knn"]["bins"]) == 10 and sum(b["count"] for b in result["knn"]["bins"]) == 450
    assert set(result["corruption"]) == {"crop", "blur", "noise", "occlusion"}
    assert len(result["lowest_kappa_indices"]) == 16
    for figure in ("accuracy_by_kappa", "kappa_histogram", "kappa_corruption", "lowest_kappa", "highest_kappa"):
        assert (run / "figures" / f"{figure}.png").stat().st_size > 1000
    report = (run / "report.md").read_text()
    assert "figures/lowest_kappa.png" in report and "AUROC" in report


def test_uncertainty_of_a_simsiam_run_is_a_clear_error(tiny_runs, capsys):
    assert cli.main(["uncertainty", str(tiny_runs / "none"), "--linear-epochs", "1", "--threads", "1"]) == 2
    assert "has no kappa" in capsys.readouterr().err
    assert cli.main(["knn", str(tiny_runs / "nowhere")]) == 2
    assert "not a pretraining run directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command, options, message",
    [("knn", ["--k", "0"], "--k 0: must be an integer >= 1"),
     ("knn", ["--temperature", "-1"], "--temperature -1.0: must be a finite number > 0"),
     ("linear", ["--linear-epochs", "0"], "--linear-epochs 0: must be an integer >= 1"),
     ("linear", ["--linear-lr", "nan"], "--linear-lr nan: must be a finite number > 0"),
     ("uncertainty", ["--threads", "0"], "--threads 0: must be an integer >= 1"),
     ("knn", ["--device", "tpu"], "--device 'tpu': must be one of auto, cpu, cuda")],
)
def test_evaluation_options_are_checked(tiny_runs, capsys, command, options, message):
    assert cli.main([command, str(tiny_runs / "power_spherical"), *options]) == 2
    err = capsys.readouterr().err
    assert err == f"vi-simsiam: error: {message}" + err[len("vi-simsiam: error: ") + len(message):]
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "damage, message",
    [("config.json", "config.json is damaged"), ("checkpoint.pt", None), ("features.pt", None)],
)
def test_damaged_run_files_are_one_line_errors(tiny_runs, tmp_path, capsys, damage, message):
    """A garbled config is a clear error; a truncated newest checkpoint is passed over for the one before
    (named on stderr; tests/test_cli_errors.py: all of them damaged); a damaged feature cache is recomputed."""
    run = tmp_path / "run"
    shutil.copytree(tiny_runs / "power_spherical", run)
    path = run / damage
    if damage == "config.json":
        path.write_text("{garbage")
    else:
        data = path.read_bytes() if path.exists() else b"x" * 4096
        path.write_bytes(data[: len(data) // 3])
    code = cli.main(["knn", str(run), "--threads", "1"])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0, err
        if damage == "checkpoint.pt":
            assert "skipping" in err and "evaluating checkpoint.1.pt" in err, err
    else:
        assert code == 2 and message in err and "Traceback" not in err, err
