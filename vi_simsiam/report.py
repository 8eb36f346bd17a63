"""Figures (PNG, matplotlib) and report.md for the uncertainty analysis of a run.

figures/accuracy_by_kappa.png   accuracy per kappa decile, kNN and linear probe
figures/kappa_histogram.png     kappa of every test image
figures/kappa_corruption.png    mean kappa against corruption level, relative to clean images
figures/lowest_kappa.png        the 16 lowest-kappa test images (the paper's Figure 1, bottom)
figures/highest_kappa.png       the 16 highest-kappa test images (Figure 1, top)
figures/probe_examples.png      the harder questions' inputs: mixed, out-of-distribution, augmented
figures/probe_mixing.png        AUROC of clean vs mixed images against the mixing ratio, kappa and baselines
figures/probe_ood.png           AUROC of clean vs each kind of out-of-distribution input
figures/probe_augmentation.png  mean kappa (or view agreement) and AUROC against augmentation strength

A SimSiam run (no kappa head) gets the harder questions for the no-head baselines only.
"""

from __future__ import annotations

import math
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
    plt = _pyplot()
    figures = run.run_dir / "figures"
    figures.mkdir(exist_ok=True)
    if "skipped" not in analysis["probes"]:
        _probe_figures(plt, run, features, analysis["probes"], figures)
    if features["test_kappa"] is not None:
        _kappa_figures(plt, run, features, analysis, figures)
    path = run.run_dir / "report.md"
    path.write_text(report_markdown(run, analysis))
    return path


def _kappa_figures(plt, run, features: dict, analysis: dict, figures: Path) -> None:
    from .augmentations import eval_parts

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


# ---------------------------------------------------------------------------- the harder questions
SCORE_LABELS = {
    "kappa": "kappa",
    "neighbour_similarity": "neighbour similarity",
    "view_agreement": "view agreement",
    "knn_margin": "kNN vote margin",
}
SHORT_LABELS = {"kappa": "kappa", "neighbour_similarity": "nbr-sim", "view_agreement": "views", "knn_margin": "kNN-margin"}


def _save(plt, figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _chance(ax) -> None:
    """The AUROC of a score that knows nothing."""
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")


def _auroc_curves(ax, levels: list, curves: dict, xlabel: str, ylabel: str) -> None:
    """One line per score (``curves``: name -> AUROC per level) and the chance level."""
    for name, values in curves.items():
        ax.plot(levels, values, marker="o", label=SCORE_LABELS[name])
    _chance(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def _probe_examples(run, features: dict, count: int = 8) -> tuple[list[str], torch.Tensor]:
    """(row names, images (rows * count, C, H, W)): the first ``count`` held-out images as each question asks them."""
    from . import uncertainty_probes as P
    from .augmentations import eval_parts
    from .evaluation import PROBE_IMAGES

    prepare, _ = eval_parts(run.cfg.augmentation, run.cfg.image_size)
    count = min(count, len(run.eval_test_set))
    images = torch.stack([prepare(run.eval_test_set.image(i)) for i in range(count)])
    labels = features["test_labels"][: min(PROBE_IMAGES, len(features["test_labels"]))]
    partners = torch.stack([prepare(run.eval_test_set.image(int(j))) for j in P.partner_indices(labels)[:count]])
    rows = [("clean", images), ("mixed 0.3", P.mix(images, partners, 0.3)), ("mixed 0.5", P.mix(images, partners, 0.5))]
    rows += [(kind, P.out_of_distribution(images, kind)) for kind in P.OOD_KINDS]
    for strength in (1.0, 2.0):
        augment = P.augmentation_at(run.cfg.augmentation, run.cfg.image_size, strength)
        rows.append((f"augmented x{strength:g}", augment(images, 1000).clamp(0, 1)))
    return [name for name, _ in rows], torch.cat([batch for _, batch in rows])


def _probe_figures(plt, run, features: dict, probes: dict, figures: Path) -> None:
    from .uncertainty import resize_for_grid

    names = probes["scores"]
    row_names, examples = _probe_examples(run, features)
    examples = resize_for_grid(examples.float().clamp(0, 1))
    count = len(examples) // len(row_names)
    figure, axes = plt.subplots(len(row_names), count, figsize=(count * 0.9, len(row_names) * 0.95), squeeze=False)
    for index, ax in enumerate(axes.flat):
        image = examples[index]
        ax.imshow(image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([]), ax.set_yticks([])
        if index % count == 0:
            ax.set_ylabel(row_names[index // count], rotation=0, ha="right", va="center", fontsize=8)
    _save(plt, figure, figures / "probe_examples.png")

    figure, ax = plt.subplots(figsize=(6, 3.5))
    _auroc_curves(ax, probes["mixing"]["ratios"], {n: probes["mixing"]["scores"][n]["auroc"] for n in names},
                  "mixing ratio (0.5 = an even blend of two classes)", "AUROC, clean vs mixed")
    _save(plt, figure, figures / "probe_mixing.png")

    kinds = list(probes["ood"]["kinds"])
    figure, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(names)
    for offset, name in enumerate(names):
        values = [probes["ood"]["kinds"][kind][name]["auroc"] for kind in kinds]
        ax.bar([i + (offset - (len(names) - 1) / 2) * width for i in range(len(kinds))], values, width,
               label=SCORE_LABELS[name])
    _chance(ax)
    ax.set_xticks(range(len(kinds)), [kind.replace("_", " ") for kind in kinds], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("AUROC, clean vs out-of-distribution")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    _save(plt, figure, figures / "probe_ood.png")

    augmentation = probes["augmentation"]
    strengths = augmentation["strengths"]
    level_score = "kappa" if "kappa" in names else "view_agreement"
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for component, entry in augmentation["components"].items():
        means = entry[level_score]["mean"]
        levels = strengths if component == "all" else augmentation["component_strengths"]
        left.plot(levels, [m / means[0] for m in means], marker="o", label=component)
    left.set_xlabel("augmentation strength (1 = training)")
    left.set_ylabel(f"mean {SCORE_LABELS[level_score]} / clean")
    left.legend(fontsize=8)
    _auroc_curves(right, strengths, {n: augmentation["components"]["all"][n]["auroc"] for n in names},
                  "strength of the whole training augmentation", "AUROC, clean vs augmented")
    _save(plt, figure, figures / "probe_augmentation.png")


def _summary_label(statistic: str, probes: dict) -> str:
    from .uncertainty import SUMMARY_STATISTICS

    label = SUMMARY_STATISTICS[statistic]
    probe = statistic.split("_")[0]
    if statistic.endswith("correctness") and probe in probes.get("num_wrong", {}):
        label += f" ({probes['num_wrong'][probe]} wrong)"
    return label


def _verdict(probes: dict) -> list[str]:
    """One line per baseline: on how many questions kappa's AUROC is the larger."""
    beats = probes.get("kappa_beats")
    if not beats:
        return []
    lines = []
    for baseline in [n for n in probes["scores"] if n != "kappa"]:
        answers = [row[baseline] for row in beats.values()]
        won = [statistic for statistic, row in beats.items() if row[baseline]]
        decided = sum(a is not None for a in answers)
        lines.append(f"kappa beats {SCORE_LABELS[baseline]} on {len(won)} of {decided} questions"
                     + (f" ({', '.join(won)})" if won else ""))
    return lines


def probe_summary_lines(probes: dict) -> list[str]:
    """The harder questions as a small table (AUROC per score) and the verdict: the printed summary's part."""
    if "skipped" in probes:
        return [f"  harder questions (mixed, out-of-distribution, augmented inputs) skipped: {probes['skipped']}"]
    names = probes["scores"]
    head = "  AUROC (certain vs uncertain)".ljust(52) + "".join(SHORT_LABELS[n].rjust(11) for n in names)
    lines = [head]
    for statistic, row in probes["summary"].items():
        lines.append(("  " + _summary_label(statistic, probes)).ljust(52) + "".join(f"{row[n]:11.3f}" for n in names))
    return lines + ["  " + line for line in _verdict(probes)]


def probe_markdown(probes: dict, kappa: bool) -> list[str]:
    if "skipped" in probes:
        return ["## Harder questions: kappa against scores that need no kappa head", "",
                f"Skipped: {probes['skipped']}.", ""]
    names = probes["scores"]
    header = "| " + " | ".join(SCORE_LABELS[n] for n in names) + " |"
    rule = "|---" * (len(names) + 1) + "|"
    lines = [
        "## Harder questions: kappa against scores that need no kappa head",
        "",
        f"On the first {probes['num_images']} held-out images. Every number is an AUROC with the certain side as "
        "positives (clean inputs, right predictions): the probability that a random certain-side input scores above "
        "a random uncertain-side one; 0.5 is chance, 1 a perfect ordering. The baselines: *neighbour similarity*, "
        "the mean cosine of the input's backbone feature to its 20 nearest training features; *view agreement*, "
        "SimSiam's 1/2 [cos(p1, z2) + cos(p2, z1)] between two training augmentations of the input, averaged over "
        "view pairs; *kNN vote margin*, the kNN classifier's vote share of its first class minus its second's.",
        "",
        "| question " + header,
        "|---" + rule,
    ]
    for statistic, row in probes["summary"].items():
        best = max(row.values(), key=lambda v: -1 if math.isnan(v) else v)
        lines.append(f"| {_summary_label(statistic, probes)} | "
                     + " | ".join(f"**{row[n]:.3f}**" if row[n] == best else f"{row[n]:.3f}" for n in names) + " |")
    lines.append("")
    if kappa:
        lines += [f"- {line}" for line in _verdict(probes)] + [""]
    else:
        lines += ["SimSiam run: no kappa head, so only the baselines are measured.", ""]

    mixing = probes["mixing"]
    lines += [
        "### Ambiguous inputs: two held-out images of different classes mixed",
        "",
        "(1 - r) a + r b, with b a held-out image of another class; r = 0.5 is an even blend. Mean score (AUROC of "
        "clean vs mixed at that ratio):",
        "",
        "| ratio " + header,
        "|---" + rule,
    ]
    for i, ratio in enumerate(mixing["ratios"]):
        lines.append(f"| {ratio:g} | " + " | ".join(
            f"{mixing['scores'][n]['mean'][i]:.4g} ({mixing['scores'][n]['auroc'][i]:.3f})" for n in names) + " |")
    lines.append("| Spearman(ratio, score) | " + " | ".join(f"{mixing['scores'][n]['spearman']:.3f}" for n in names)
                 + " |")
    lines += ["", "![AUROC against mixing ratio](figures/probe_mixing.png)", ""]

    ood = probes["ood"]
    lines += [
        "### Out-of-distribution inputs",
        "",
        "Built from the held-out images (same count and shape): Gaussian noise with their mean and spread, uniform "
        "noise, blank images of one random level, inverted images, each image's pixels shuffled, images rotated by "
        "90 degrees, capital letters drawn with PIL. AUROC of clean vs each kind:",
        "",
        "| kind " + header,
        "|---" + rule,
    ]
    for kind, row in ood["kinds"].items():
        lines.append(f"| {kind.replace('_', ' ')} | " + " | ".join(f"{row[n]['auroc']:.3f}" for n in names) + " |")
    lines.append("| **mean** | " + " | ".join(f"{ood['mean_auroc'][n]:.3f}" for n in names) + " |")
    lines += ["", "![AUROC per kind of input](figures/probe_ood.png)", "",
              "![the inputs of every question](figures/probe_examples.png)", ""]

    augmentation = probes["augmentation"]
    strengths = ", ".join(f"{s:g}" for s in augmentation["strengths"])
    parts = ", ".join(f"{s:g}" for s in augmentation["component_strengths"])
    lines += [
        "### Augmentation strength",
        "",
        f"The training augmentation at strengths {strengths} (1 = training, 0 = none), and each of its parts alone "
        f"at {parts}. Mean score at the strongest level relative to clean, AUROC of clean vs the strongest level, "
        "and Spearman(strength, score) over all levels:",
        "",
        "| parts " + header,
        "|---" + rule,
    ]
    for component, entry in augmentation["components"].items():
        lines.append(f"| {component} | " + " | ".join(
            f"x{entry[n]['mean'][-1] / entry[n]['mean'][0]:.3f}, {entry[n]['auroc'][-1]:.3f}, "
            f"rho {entry[n]['spearman']:.2f}" if entry[n]["mean"][0] else f"{entry[n]['auroc'][-1]:.3f}"
            for n in names) + " |")
    lines += ["", "![scores against augmentation strength](figures/probe_augmentation.png)", ""]
    return lines


def headline_text(analysis: dict) -> str:
    if "kappa" not in analysis:
        return "\n".join([f"  kNN top-1 {analysis['knn_top1']:.4f}, linear probe top-1 {analysis['linear_top1']:.4f}",
                          *probe_summary_lines(analysis["probes"])])
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
            *probe_summary_lines(analysis["probes"]),
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
        *probe_markdown(analysis["probes"], kappa="kappa" in analysis),
    ]
    if "kappa" not in analysis:
        return "\n".join(lines)
    lines += [
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
