"""The evaluation at the end of pretraining: the held-out numbers of the trained model (eval.json
and what ``evaluation.evaluate_all`` writes), and the summary printed for the user."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import config as config_lib
from .evaluation import Run, evaluate_all
from .trainer import Trainer


def evaluate(trainer: Trainer) -> dict:
    """kNN, linear probe and (VI-SimSiam) the uncertainty analysis on the held-out split.

    Writes eval.json (the headline numbers) and what ``evaluation.evaluate_all`` writes (knn.json,
    linear.json, test_predictions.csv, and for VI-SimSiam uncertainty.json, report.md, figures/).
    """
    run = Run(
        trainer.cfg,
        trainer.model,
        trainer.run_dir,
        trainer.eval_train_set,
        trainer.eval_test_set,
        trainer.ctx.device,
        trainer.step,
    )
    result = evaluate_all(run)
    result["epoch"] = trainer.epoch
    (trainer.run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


SKIPPED_IMAGES_NAME = "skipped_images.txt"


def record_skipped_images(trainer: Trainer, run_dir: Path) -> int:
    """The unreadable image files left out of the data sets (image folders), one "path<TAB>reason" a
    line in the run directory, and a line on stdout; their count."""
    skipped = [entry for data in (trainer.pretrain_set, trainer.eval_test_set) for entry in getattr(data, "skipped", [])]
    if skipped:
        (run_dir / SKIPPED_IMAGES_NAME).write_text("".join(f"{path}\t{reason}\n" for path, reason in skipped))
        print(f"skipped {len(skipped)} unreadable image file(s); listed in {run_dir / SKIPPED_IMAGES_NAME}", flush=True)
    return len(skipped)


def summary_text(cfg: config_lib.Config, result: dict, seconds: float, run_dir: Path) -> str:
    name = "SimSiam" if cfg.distribution == "none" else f"VI-SimSiam ({cfg.distribution})"
    lines = [
        f"{name} on {cfg.dataset}: {cfg.epochs} epochs, {seconds:.0f} s wall time "
        f"({torch.get_num_threads()} CPU threads)",
        f"  kNN top-1 (k={result['knn_k']}, t={result['knn_temperature']}) on {result['num_test']} held-out images: "
        f"{result['knn_top1']:.4f}; linear probe: {result['linear_top1']:.4f}",
    ]
    if "kappa" in result:
        k = result["kappa"]
        lines += [
            f"  kappa on held-out images: median {k['median']:.4g}, range [{k['min']:.4g}, {k['max']:.4g}] "
            f"(d = {cfg.dim})",
            f"  kappa -> kNN correctness: AUROC {result['auroc_knn']:.3f}; accuracy in the lowest / highest kappa "
            f"decile {result['bottom_decile_knn']:.3f} / {result['top_decile_knn']:.3f}",
            "  mean kappa, strongest corruption / clean: "
            + ", ".join(f"{n} {r:.2f}" for n, r in result["corruption_ratio"].items()),
        ]
    if "probes" in result:
        from .report import probe_summary_lines

        lines += probe_summary_lines(result["probes"])
        lines.append(f"  report: {run_dir / 'report.md'}")
    if result.get("skipped_images"):
        lines.append(f"  unreadable image files skipped: {result['skipped_images']} "
                     f"(listed in {run_dir / SKIPPED_IMAGES_NAME})")
    lines.append(f"  run directory: {run_dir}")
    return "\n".join(lines)
