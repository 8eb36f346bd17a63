"""Uncertainty analysis: is kappa (the predicted concentration) a measure of how well an image is understood?

1. accuracy per kappa quantile bin (10 equal-count bins) for kNN and linear-probe predictions;
2. Spearman correlation between kappa and correctness, and the AUROC of kappa as a predictor of
   correctness (SciPy / scikit-learn, not re-implemented);
3. kappa of the same images under increasing corruption (crop, blur, noise, occlusion): the paper's
   reading of kappa predicts that it falls as information is removed;
4./5. the images for the lowest/highest-kappa grids and the kappa histogram (drawn by ``report``).

Shapes: kappa (N,), correct (N,) bool, images (N, C, H, W) in [0, 1] before normalization.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF


# ---------------------------------------------------------------------------- kappa against accuracy
def quantile_bins(kappa: torch.Tensor, bins: int = 10) -> torch.Tensor:
    """(N,) -> (N,) bin index 0..bins-1 by rank: bin b holds the images ranked [b N/bins, (b+1) N/bins).

    Ranking (stable, ties by index) rather than value cut points gives equal counts even when
    many kappa values coincide, e.g. at kappa_min.
    """
    n = kappa.numel()
    order = torch.argsort(kappa, stable=True)
    index = torch.empty(n, dtype=torch.long)
    index[order] = torch.arange(n) * bins // max(n, 1)
    return index


def accuracy_by_kappa_bin(kappa: torch.Tensor, correct: torch.Tensor, bins: int = 10) -> list[dict]:
    """Per bin (lowest kappa first): count, kappa range and mean, accuracy."""
    index = quantile_bins(kappa, bins)
    rows = []
    for b in range(bins):
        mask = index == b
        if not mask.any():
            continue
        k = kappa[mask].double()
        rows.append(
            {
                "bin": b,
                "count": int(mask.sum()),
                "kappa_min": k.min().item(),
                "kappa_max": k.max().item(),
                "kappa_mean": k.mean().item(),
                "accuracy": correct[mask].double().mean().item(),
            }
        )
    return rows


def kappa_predicts_correctness(kappa: torch.Tensor, correct: torch.Tensor) -> dict:
    """Spearman rho (and p-value) between kappa and correctness; AUROC of kappa for correct vs wrong."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    k, c = kappa.double().numpy(), correct.numpy().astype(np.int64)
    result = {"accuracy": float(c.mean()), "num_wrong": int((c == 0).sum())}
    if c.min() == c.max() or np.ptp(k) == 0:  # all right, all wrong or one kappa: neither statistic is defined
        result.update(spearman=float("nan"), spearman_p=float("nan"), auroc=float("nan"))
        return result
    rho, p = spearmanr(k, c)
    result.update(spearman=float(rho), spearman_p=float(p), auroc=float(roc_auc_score(c, k)))
    return result


def decile_contrast(rows: list[dict]) -> dict:
    """Accuracy of the top-kappa bin against the bottom-kappa bin."""
    return {"bottom_bin_accuracy": rows[0]["accuracy"], "top_bin_accuracy": rows[-1]["accuracy"]}


# ---------------------------------------------------------------------------- corruptions
def crop(images: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep the central ``fraction`` of each side and resize back: less of the object is seen."""
    if fraction >= 1:
        return images
    h, w = images.shape[-2:]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - ch) // 2, (w - cw) // 2
    return TF.resized_crop(images, top, left, ch, cw, [h, w], antialias=True)


def blur(images: torch.Tensor, sigma_fraction: float) -> torch.Tensor:
    """Gaussian blur with sigma = ``sigma_fraction`` x image side (so levels mean the same at 8 or 224 px)."""
    if sigma_fraction <= 0:
        return images
    sigma = sigma_fraction * images.shape[-1]
    size = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(images, [size, size], [sigma, sigma])


def noise(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """Additive Gaussian noise of ``std`` (images in [0, 1]), clamped; seeded so reruns agree."""
    if std <= 0:
        return images
    generator = torch.Generator().manual_seed(seed)
    return (images + std * torch.randn(images.shape, generator=generator).to(images)).clamp(0, 1)


def occlude(images: torch.Tensor, area: float) -> torch.Tensor:
    """Zero a centred square covering ``area`` of the image (where digits and objects usually are)."""
    if area <= 0:
        return images
    h, w = images.shape[-2:]
    sh, sw = max(1, round(h * math.sqrt(area))), max(1, round(w * math.sqrt(area)))
    top, left = (h - sh) // 2, (w - sw) // 2
    out = images.clone()
    out[..., top : top + sh, left : left + sw] = 0
    return out


# Each corruption: (function, levels from none to severe). Level 0 is the clean image.
CORRUPTIONS: dict[str, tuple[Callable, list[float]]] = {
    "crop": (crop, [1.0, 0.8, 0.65, 0.5, 0.35]),
    "blur": (blur, [0.0, 0.04, 0.08, 0.12, 0.16]),
    "noise": (noise, [0.0, 0.1, 0.2, 0.35, 0.5]),
    "occlusion": (occlude, [0.0, 0.1, 0.2, 0.35, 0.5]),
}


@torch.no_grad()
def kappa_under_corruption(
    kappa_of: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    corruptions: dict = CORRUPTIONS,
    batch_size: int = 512,
) -> dict:
    """For each corruption and level: mean and median kappa of ``images`` corrupted at that level.

    ``kappa_of`` maps a batch of [0, 1] images (B, C, H, W) to kappa (B,) (normalization and the
    model inside). Also the Spearman correlation between level and per-image kappa, and whether
    mean kappa falls from the clean to the most corrupted level.
    """
    from scipy.stats import spearmanr

    result = {}
    for name, (corrupt, levels) in corruptions.items():
        per_level, all_levels, all_kappa = [], [], []
        for rank, level in enumerate(levels):
            kappa = torch.cat(
                [
                    kappa_of(corrupt(images[i : i + batch_size], level)).double().cpu()
                    for i in range(0, len(images), batch_size)
                ]
            )
            per_level.append({"level": level, "kappa_mean": kappa.mean().item(), "kappa_median": kappa.median().item()})
            all_levels.append(np.full(len(kappa), rank))
            all_kappa.append(kappa.numpy())
        kappas = np.concatenate(all_kappa)
        # a constant kappa (a head that ignores the image) has no rank correlation: report nan, not a warning
        rho = spearmanr(np.concatenate(all_levels), kappas)[0] if np.ptp(kappas) > 0 else float("nan")
        result[name] = {
            "levels": per_level,
            "spearman_level_kappa": float(rho),
            "falls": per_level[-1]["kappa_mean"] < per_level[0]["kappa_mean"],
            "ratio_most_to_clean": per_level[-1]["kappa_mean"] / per_level[0]["kappa_mean"],
        }
    return result


def lowest_and_highest(kappa: torch.Tensor, count: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the ``count`` lowest- and highest-kappa images (lowest first / highest first)."""
    order = torch.argsort(kappa, stable=True)
    count = min(count, len(order))
    return order[:count], order.flip(0)[:count]


def resize_for_grid(images: torch.Tensor, size: int = 64) -> torch.Tensor:
    """Nearest-neighbour upscaling so 8x8 digits stay crisp in a figure."""
    if images.shape[-1] >= size:
        return images
    return F.interpolate(images, size=(size, size), mode="nearest")


# ---------------------------------------------------------------------------- harder questions, against baselines
def auroc(positive, negative) -> float:
    """P(a positive scores above a negative), a tie counting one half: the Mann-Whitney U / (n_pos n_neg).

    The statistic of every comparison below, with "positive" the clean (or correctly classified)
    images and the score a certainty: the AUROC of -score for finding the perturbed ones. nan when
    either side is empty; 0.5 for a score that is the same everywhere.
    """
    from scipy.stats import rankdata

    positive, negative = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if not len(positive) or not len(negative):
        return float("nan")
    ranks = rankdata(np.concatenate([positive, negative]))
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def _spearman(levels: np.ndarray, values: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(levels, values)[0]) if np.ptp(values) > 0 and np.ptp(levels) > 0 else float("nan")


def _sweep(scorer, clean: dict, levels, inputs_at) -> dict:
    """Scores at each level (level 0 = the clean inputs): per score the mean per level, the AUROC of
    clean against each level, and the Spearman correlation of level and per-image score."""
    per_level = [clean if level == 0 else scorer(inputs_at(level)) for level in levels]
    result = {}
    for name in scorer.names:
        values = [scores[name] for scores in per_level]
        rank = np.concatenate([np.full(len(v), i) for i, v in enumerate(values)])
        result[name] = {
            "mean": [v.mean().item() for v in values],
            "auroc": [auroc(clean[name], v) for v in values],
            "spearman": _spearman(rank, torch.cat(values).numpy()),
        }
    return result


SUMMARY_STATISTICS = {
    "knn_correctness": "kNN correct vs wrong",
    "linear_correctness": "linear probe correct vs wrong",
    "mixed_vs_clean": "clean vs mixed 50/50",
    "ood_vs_clean": "clean vs out-of-distribution (mean over kinds)",
    "augmented_vs_clean": "clean vs strongest augmentation",
}


@torch.no_grad()
def harder_questions(scorer, images: torch.Tensor, labels: torch.Tensor, correct: dict, augmentation: str,
                     image_size: int, seed: int = 0) -> dict:
    """Kappa and the no-head baselines (``baselines.Scorer``) on the inputs of ``uncertainty_probes``.

    images (N, C, H, W) in [0, 1] with their labels; ``correct``: {"knn": (N,) bool, "linear": ...}.
    Every statistic is an AUROC with the certain side (clean, correct) as positives, so 0.5 is
    chance and the scores compare directly: ``summary`` holds one number per statistic and score,
    ``kappa_beats`` whether kappa's is the larger against each baseline (None where undefined).
    """
    from . import uncertainty_probes as P

    clean = scorer(images)
    result = {"num_images": len(images), "scores": list(scorer.names), "correctness": {}}
    for probe, right in correct.items():
        right = torch.as_tensor(right, dtype=torch.bool)
        entry = {"num_wrong": int((~right).sum())}
        entry.update({name: auroc(clean[name][right], clean[name][~right]) for name in scorer.names})
        result["correctness"][probe] = entry
    result["num_wrong"] = {probe: entry["num_wrong"] for probe, entry in result["correctness"].items()}

    partners = images[P.partner_indices(labels, seed)]
    result["mixing"] = {"ratios": list(P.MIXING_RATIOS),
                        "scores": _sweep(scorer, clean, P.MIXING_RATIOS, lambda r: P.mix(images, partners, r))}

    ood = {kind: scorer(P.out_of_distribution(images, kind, seed)) for kind in P.OOD_KINDS}
    result["ood"] = {
        "kinds": {kind: {name: {"auroc": auroc(clean[name], s[name]), "mean": s[name].mean().item(),
                                "clean_mean": clean[name].mean().item()} for name in scorer.names}
                  for kind, s in ood.items()},
        "mean_auroc": {name: float(np.mean([auroc(clean[name], s[name]) for s in ood.values()]))
                       for name in scorer.names},
    }

    result["augmentation"] = {"strengths": list(P.AUGMENTATION_STRENGTHS),
                              "component_strengths": list(P.COMPONENT_STRENGTHS), "components": {}}
    for component in ("all", *P.AUGMENTATION_COMPONENTS[augmentation]):
        def augmented(strength, component=component):
            return P.augmentation_at(augmentation, image_size, strength, component)(images, seed + 1000)

        strengths = P.AUGMENTATION_STRENGTHS if component == "all" else P.COMPONENT_STRENGTHS
        result["augmentation"]["components"][component] = _sweep(scorer, clean, strengths, augmented)

    strongest = result["augmentation"]["components"]["all"]
    summary = {
        "knn_correctness": {n: result["correctness"].get("knn", {}).get(n, float("nan")) for n in scorer.names},
        "linear_correctness": {n: result["correctness"].get("linear", {}).get(n, float("nan")) for n in scorer.names},
        "mixed_vs_clean": {n: result["mixing"]["scores"][n]["auroc"][-1] for n in scorer.names},
        "ood_vs_clean": dict(result["ood"]["mean_auroc"]),
        "augmented_vs_clean": {n: strongest[n]["auroc"][-1] for n in scorer.names},
    }
    result["summary"] = summary
    if "kappa" in scorer.names:
        result["kappa_beats"] = {
            statistic: {b: (None if math.isnan(v["kappa"]) or math.isnan(v[b]) else bool(v["kappa"] > v[b]))
                        for b in scorer.names if b != "kappa"}
            for statistic, v in summary.items()
        }
    return result
