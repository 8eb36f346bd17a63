"""Figures (PNG, matplotlib) and report.md for the uncertainty analysis of a run.

figures/accuracy_by_kappa.png   accuracy per kappa decile, kNN and linear probe
figures/kappa_histogram.png     kappa of every test image
figures/kappa_corruption.png    mean kappa against corruption level, relative to clean images
figures/lowest_kappa.png        the 16 lowest-kappa test images (the paper's Figure 1, bottom)
figures/highest_kappa.png       the 16 highest-kappa test images (Figure 1, top)
"""

from __future__ import annotations

from pathlib import Path

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    return plt


def _image_grid(plt, images: torch.Tensor, kappas: list[float], title: str, path: Path) -> None:
    from .uncertainty import resize_for_grid

    images = resize_for_grid(images)
    cols = 8
    rows = (len(images) + cols - 1) // cols
    figure, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.7), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, kappa in zip(axes.flat, images, kappas):
        image = image.clamp(0, 1)
        if image.shape[0] == 1:
            ax.imshow(image[0].numpy(), cmap="gray_r" if image.mean() < 0.5 else "gray", vmin=0, vmax=1)
        else:
            ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_title(f"{kappa:.3g}", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(run, features: dict, analysis: dict) -> Path:
    """Draw the figures and write report.md into the run directory; returns the report's path."""
    from .augmentations import eval_parts

    plt = _pyplot()
    figures = run.run_dir / "figures"
    figures.mkdir(exist_ok=True)
    kappa = features["test_kappa"]

    figure, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.4
    for offset, name in ((-width / 2, "knn"), (width / 2, "linear")):
        bins = analysis[name]["bins"]
        ax.bar([b["bin"] + 1 + offset for b in bins], [b["accuracy"] for b in bins], width, label=name)
    ax.set_xlabel("kappa decile (1 = lowest kappa)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(max(0.0, min(b["accuracy"] for n in ("knn", "linear") for b in analysis[n]["bins"]) - 0.1), 1.0)
    ax.set_xticks(range(1, len(analysis["knn"]["bins"]) + 1))
    ax.legend()
    figure.tight_layout()
    figure.savefig(figures / "accuracy_by_kappa.png", dpi=100)
    plt.close(figure)

    figure, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(kappa.numpy(), bins=40)
    ax.set_xlabel(f"kappa (d = {run.cfg.dim})")
    ax.set_ylabel("test images")
    figure.tight_layout()
    figure.savefig(figures / "kappa_histogram.png", dpi=100)
    plt.close(figure)

    figure, ax = plt.subplots(figsize=(6, 3.5))
    for name, entry in analysis["corruption"].items():
        clean = entry["levels"][0]["kappa_mean"]
        ax.plot(
            range(len(entry["levels"])), [lv["kappa_mean"] / clean for lv in entry["levels"]], marker="o", label=name
        )
    ax.set_xticks(range(max(len(e["levels"]) for e in analysis["corruption"].values())))
    ax.set_xlabel("corruption level (0 = clean)")
    ax.set_ylabel("mean kappa / clean mean kappa")
    ax.legend()
    figure.tight_layout()
    figure.savefig(figures / "kappa_corruption.png", dpi=100)
    plt.close(figure)

    prepare, _ = eval_parts(run.cfg.augmentation, run.cfg.image_size)
    for name, key in (("lowest", "lowest_kappa_indices"), ("highest", "highest_kappa_indices")):
        indices = analysis[key]
        images = torch.stack([prepare(run.eval_test_set.image(i)) for i in indices])
        _image_grid(plt, images, [kappa[i].item() for i in indices], f"{name} kappa", figures / f"{name}_kappa.png")

    path = run.run_dir / "report.md"
    path.write_text(report_markdown(run, analysis))
    return path


def headline_text(analysis: dict) -> str:
    knn, linear = analysis["knn"], analysis["linear"]
    ratios = ", ".join(f"{name} x{c['ratio_most_to_clean']:.2f}" for name, c in analysis["corruption"].items())
    return "\n".join(
        [
            f"  kNN top-1 {analysis['knn_top1']:.4f}, linear probe top-1 {analysis['linear_top1']:.4f}",
            f"  kappa as a predictor of kNN correctness: AUROC {knn['auroc']:.3f}, Spearman {knn['spearman']:.3f}; "
            f"accuracy lowest/highest kappa decile {knn['bottom_bin_accuracy']:.3f} / {knn['top_bin_accuracy']:.3f}",
            f"  (linear probe: AUROC {linear['auroc']:.3f}; deciles {linear['bottom_bin_accuracy']:.3f} / "
            f"{linear['top_bin_accuracy']:.3f})",
            f"  mean kappa at the strongest corruption relative to clean images: {ratios}",
        ]
    )


def report_markdown(run, analysis: dict) -> str:
    cfg = run.cfg
    lines = [
        f"# Uncertainty analysis: {run.run_dir.name}",
        "",
        f"{cfg.preset} preset, distribution `{cfg.distribution}`, d = {cfg.dim}, checkpoint step {analysis['step']}, "
        f"{analysis['num_test']} held-out images. Every number is in `uncertainty.json`.",
        "",
        "## Accuracy against kappa",
        "",
        "| | top-1 | AUROC (kappa -> correct) | Spearman | lowest-kappa decile | highest-kappa decile |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (("knn", f"kNN (k={cfg.knn_k})"), ("linear", "linear probe")):
        entry = analysis[name]
        lines.append(
            f"| {label} | {analysis[name + '_top1']:.4f} | {entry['auroc']:.3f} | {entry['spearman']:.3f} | "
            f"{entry['bottom_bin_accuracy']:.3f} | {entry['top_bin_accuracy']:.3f} |"
        )
    lines += [
        "",
        "![accuracy by kappa decile](figures/accuracy_by_kappa.png)",
        "",
        "| decile | kappa range | kNN accuracy | linear accuracy |",
        "|---|---|---|---|",
    ]
    for a, b in zip(analysis["knn"]["bins"], analysis["linear"]["bins"]):
        lines.append(
            f"| {a['bin'] + 1} | {a['kappa_min']:.4g} - {a['kappa_max']:.4g} | "
            f"{a['accuracy']:.3f} | {b['accuracy']:.3f} |"
        )
    lines += [
        "",
        "## Kappa under corruption",
        "",
        f"Mean kappa of the first {analysis['corruption_num_images']} test images at each level.",
        "",
        "| corruption | levels | mean kappa per level | Spearman(level, kappa) | falls |",
        "|---|---|---|---|---|",
    ]
    for name, entry in analysis["corruption"].items():
        levels = ", ".join(f"{lv['level']:g}" for lv in entry["levels"])
        means = ", ".join(f"{lv['kappa_mean']:.4g}" for lv in entry["levels"])
        lines.append(f"| {name} | {levels} | {means} | {entry['spearman_level_kappa']:.3f} | {entry['falls']} |")
    lines += [
        "",
        "![kappa under corruption](figures/kappa_corruption.png)",
        "",
        "## Kappa distribution",
        "",
        "![kappa histogram](figures/kappa_histogram.png)",
        "",
        "## Lowest- and highest-kappa images",
        "",
        "![lowest kappa](figures/lowest_kappa.png)",
        "",
        "![highest kappa](figures/highest_kappa.png)",
        "",
    ]
    return "\n".join(lines)
