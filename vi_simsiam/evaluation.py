"""Evaluation of a pretraining run: ``vi-simsiam knn | linear | uncertainty RUN`` and the main job's summary.

Everything reads a run directory (config.json + checkpoint.pt) and writes its numbers back into it:

    knn.json          kNN top-1 (weighted cosine, k, t)
    linear.json       linear-probe top-1 on cached features
    uncertainty.json  every number of the uncertainty analysis (see ``uncertainty``)
    report.md         the analysis with its figures (figures/*.png)
    test_predictions.csv  label, kappa, kNN and linear predictions per held-out image
    features.pt       cached frozen features and kappa, reused while the checkpoint step is unchanged
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import config as config_lib
from .augmentations import eval_parts
from .builder import VISimSiam
from .data import build_datasets
from .errors import UNREADABLE_FILE_ERRORS, ConfigError
from .features import extract
from .knn import knn_predict
from .linear import linear_probe
from .loading import read_run, resolve_device, trained_network


@dataclass
class Run:
    """A trained model with its config, data sets and directory."""

    cfg: config_lib.Config
    model: VISimSiam
    run_dir: Path
    eval_train_set: object
    eval_test_set: object
    device: torch.device
    step: int


def load_run(run_dir, device: str = "auto") -> Run:
    """The run in ``run_dir`` at its newest checkpoint that verifies (newer ones that do not are named on
    stderr, as ``--resume`` does); a ConfigError for a path that is not a run or a damaged one."""
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    cfg, state, source, passed_over = read_run(run_dir)
    for skipped, reason in passed_over:
        print(f"vi-simsiam: skipping {skipped}: {reason}; evaluating {source.name}", file=sys.stderr, flush=True)
    model = trained_network(cfg, state, dev, source)
    _, eval_train, eval_test = build_datasets(cfg)
    return Run(cfg, model, run_dir, eval_train, eval_test, dev, state["step"])


def cached_features(run: Run) -> dict:
    """Frozen features / kappa / labels of both splits; cached in features.pt for this checkpoint step."""
    path = run.run_dir / "features.pt"
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
        except UNREADABLE_FILE_ERRORS:  # a damaged cache is computed again
            cached = {}
        if isinstance(cached, dict) and cached.get("step") == run.step:
            return cached
    cfg = run.cfg
    train_f, _, train_y = extract(run.model, run.eval_train_set, cfg.eval_batch_size, run.device, cfg.workers)
    test_f, test_kappa, test_y = extract(run.model, run.eval_test_set, cfg.eval_batch_size, run.device, cfg.workers)
    features = {
        "step": run.step,
        "train_features": train_f,
        "train_labels": train_y,
        "test_features": test_f,
        "test_labels": test_y,
        "test_kappa": test_kappa,
    }
    torch.save(features, path)
    return features


def num_classes(features: dict) -> int:
    return int(max(features["train_labels"].max(), features["test_labels"].max())) + 1


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")


# ---------------------------------------------------------------------------- the three evaluations
def run_knn(run: Run, features: dict, k: int | None = None, temperature: float | None = None) -> dict:
    k = k or run.cfg.knn_k
    temperature = temperature or run.cfg.knn_temperature
    device = run.device
    predictions, _ = knn_predict(
        features["train_features"].to(device),
        features["train_labels"],
        features["test_features"].to(device),
        num_classes(features),
        k,
        temperature,
    )
    predictions = predictions.cpu()
    result = {
        "top1": (predictions == features["test_labels"]).double().mean().item(),
        "k": k,
        "temperature": temperature,
        "num_train": len(features["train_labels"]),
        "num_test": len(features["test_labels"]),
        "step": run.step,
    }
    write_json(run.run_dir / "knn.json", result)
    return {**result, "predictions": predictions}


def run_linear(run: Run, features: dict, epochs: int = 100, lr: float | None = None) -> dict:
    probe = linear_probe(
        features["train_features"].to(run.device),
        features["train_labels"],
        features["test_features"].to(run.device),
        features["test_labels"],
        num_classes(features),
        epochs=epochs,
        lr=lr,
        seed=run.cfg.seed,
    )
    result = {"top1": probe["top1"], "epochs": epochs, "lr": lr, "step": run.step}
    write_json(run.run_dir / "linear.json", result)
    return {**result, "predictions": probe["predictions"]}


def clean_test_images(run: Run, limit: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, C, H, W) in [0, 1] before normalization, their indices): the first ``limit`` test images.

    The corruption study needs the images before normalization; a fixed prefix of the test split
    keeps it bounded on ImageNet-sized sets (digits and CIFAR-10 use all or most of it).
    """
    prepare, _ = eval_parts(run.cfg.augmentation, run.cfg.image_size)
    base = run.eval_test_set
    indices = torch.arange(min(limit, len(base)))
    return torch.stack([prepare(base.image(int(i))) for i in indices]), indices


# The harder questions (mixed, out-of-distribution and augmented inputs) ask on the first PROBE_IMAGES
# held-out images: all of digits' 450; 25 sets of inputs, 5 forwards each (~10 s on digits, 2 CPU threads).
# A split of fewer than MIN_PROBE_IMAGES gets none: an AUROC over a few dozen images is noise, and a
# ResNet's 125 forwards cost a minute on a CPU (a smoke run on fake data).
PROBE_IMAGES = 500
MIN_PROBE_IMAGES = 100


def probe_skip_reason(num_images: int) -> str | None:
    """Why a held-out split of ``num_images`` gets no harder questions (None: it gets them)."""
    if num_images < MIN_PROBE_IMAGES:
        return f"only {num_images} held-out images; the harder questions need at least {MIN_PROBE_IMAGES}"
    return None


def probe_analysis(run: Run, features: dict, knn: dict, linear: dict, images: torch.Tensor) -> dict:
    """Kappa (if the run has a head) and the no-head baselines on mixed, out-of-distribution and
    augmented versions of ``images`` (the first held-out images, in [0, 1]): ``uncertainty.harder_questions``."""
    from .baselines import Scorer
    from .uncertainty import harder_questions
    from .uncertainty_probes import augmentation_at

    cfg, labels = run.cfg, features["test_labels"][: len(images)]
    _, normalize = eval_parts(cfg.augmentation, cfg.image_size)
    augment = augmentation_at(cfg.augmentation, cfg.image_size, 1.0)
    scorer = Scorer(run.model, normalize, features["train_features"], features["train_labels"], num_classes(features),
                    cfg.knn_k, cfg.knn_temperature, augment, run.device,
                    view_pairs=2, batch_size=cfg.eval_batch_size)
    correct = {name: (result["predictions"][: len(images)] == labels) for name, result in (("knn", knn), ("linear", linear))}
    return harder_questions(scorer, images, labels, correct, cfg.augmentation, cfg.image_size)


def run_uncertainty(run: Run, features: dict, knn: dict, linear: dict, corruption_images: int = 2000) -> dict:
    """Every number of the analysis (``uncertainty.json``) plus what ``report`` draws. A SimSiam run
    (no kappa head) gets the no-head baselines' part (``probes``) only."""
    from . import uncertainty as U

    kappa = features["test_kappa"]
    labels = features["test_labels"]
    images, _ = clean_test_images(run, corruption_images)
    result = {
        "step": run.step,
        "num_test": len(labels),
        "knn_top1": knn["top1"],
        "linear_top1": linear["top1"],
    }
    skipped = probe_skip_reason(len(images))
    result["probes"] = ({"skipped": skipped} if skipped
                        else probe_analysis(run, features, knn, linear, images[:PROBE_IMAGES]))
    if kappa is None:
        write_json(run.run_dir / "uncertainty.json", result)
        return result
    result |= {
        "kappa": {
            "mean": kappa.double().mean().item(),
            "median": kappa.double().median().item(),
            "min": kappa.min().item(),
            "max": kappa.max().item(),
        },
    }
    for name, predictions in (("knn", knn["predictions"]), ("linear", linear["predictions"])):
        correct = predictions == labels
        bins = U.accuracy_by_kappa_bin(kappa, correct, bins=10)
        result[name] = {"bins": bins, **U.decile_contrast(bins), **U.kappa_predicts_correctness(kappa, correct)}

    _, normalize = eval_parts(run.cfg.augmentation, run.cfg.image_size)
    dtype = next(run.model.parameters()).dtype

    run.model.eval()

    @torch.no_grad()
    def kappa_of(batch: torch.Tensor) -> torch.Tensor:
        return run.model.embed(normalize(batch).to(run.device, dtype))[1].float().cpu()

    result["corruption"] = U.kappa_under_corruption(kappa_of, images)
    result["corruption_num_images"] = len(images)
    lowest, highest = U.lowest_and_highest(kappa, 16)
    result["lowest_kappa_indices"], result["highest_kappa_indices"] = lowest.tolist(), highest.tolist()
    write_json(run.run_dir / "uncertainty.json", result)
    return result


def write_predictions(path: Path, features: dict, knn_predictions, linear_predictions) -> None:
    """One row per held-out image: index, label, kappa (empty for SimSiam), kNN and linear predictions."""
    kappa = features["test_kappa"]
    with open(path, "w") as handle:
        handle.write("index,label,kappa,knn_prediction,linear_prediction\n")
        for i, label in enumerate(features["test_labels"].tolist()):
            k = f"{kappa[i].item():.6g}" if kappa is not None else ""
            handle.write(f"{i},{label},{k},{int(knn_predictions[i])},{int(linear_predictions[i])}\n")


def evaluate_all(run: Run, linear_epochs: int = 100) -> dict:
    """kNN, linear probe and the uncertainty analysis with its report (SimSiam: the no-head baselines only);
    returns the headline numbers.

    The model is put in eval mode: in train mode every forward would use batch statistics and
    overwrite the batch-norm running statistics.
    """
    from .report import write_report

    run.model.eval()

    features = cached_features(run)
    knn = run_knn(run, features)
    linear = run_linear(run, features, epochs=linear_epochs)
    write_predictions(run.run_dir / "test_predictions.csv", features, knn["predictions"], linear["predictions"])
    headline = {
        "knn_top1": knn["top1"],
        "knn_k": knn["k"],
        "knn_temperature": knn["temperature"],
        "linear_top1": linear["top1"],
        "num_test": knn["num_test"],
        "num_train": knn["num_train"],
    }
    analysis = run_uncertainty(run, features, knn, linear)
    write_report(run, features, analysis)
    headline["probes"] = {key: value for key, value in analysis["probes"].items()
                          if key in ("num_images", "scores", "num_wrong", "summary", "kappa_beats", "skipped")}
    if features["test_kappa"] is not None:
        headline.update(
            kappa=analysis["kappa"],
            auroc_knn=analysis["knn"]["auroc"],
            spearman_knn=analysis["knn"]["spearman"],
            bottom_decile_knn=analysis["knn"]["bottom_bin_accuracy"],
            top_decile_knn=analysis["knn"]["top_bin_accuracy"],
            auroc_linear=analysis["linear"]["auroc"],
            bottom_decile_linear=analysis["linear"]["bottom_bin_accuracy"],
            top_decile_linear=analysis["linear"]["top_bin_accuracy"],
            corruption_ratio={name: c["ratio_most_to_clean"] for name, c in analysis["corruption"].items()},
        )
    return headline


# ---------------------------------------------------------------------------- command line
def main(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    run = load_run(args.run, args.device)
    features = cached_features(run)
    if args.command == "knn":
        result = run_knn(run, features, args.k, args.temperature)
        print(
            f"kNN top-1 (k={result['k']}, t={result['temperature']}): {result['top1']:.4f}"
            f"  -> {run.run_dir / 'knn.json'}"
        )
    elif args.command == "linear":
        result = run_linear(run, features, args.linear_epochs, args.linear_lr)
        print(f"linear probe top-1: {result['top1']:.4f}  -> {run.run_dir / 'linear.json'}")
    elif args.command == "uncertainty":
        from .report import headline_text, write_report

        if features["test_kappa"] is None:
            raise ConfigError(
                f"{run.run_dir} was trained with distribution 'none' (plain SimSiam): it has no kappa "
                "(its report.md from pretraining holds the no-head baselines)"
            )
        knn = run_knn(run, features, args.k, args.temperature)
        linear = run_linear(run, features, args.linear_epochs, args.linear_lr)
        analysis = run_uncertainty(run, features, knn, linear)
        report = write_report(run, features, analysis)
        print(headline_text(analysis))
        print(f"report: {report}")
