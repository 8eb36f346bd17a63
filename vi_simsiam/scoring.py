"""``vi-simsiam score RUN PATH [PATH ...]``: rank any images by the run's kappa (low = uncertain).

    vi-simsiam score runs/digits-power_spherical-20261202-101500 my_scans/ extra.png --output scores.csv

PATHs are image files or folders, searched recursively for the formats PIL opens (hidden files and
folders left out; a file named on the command line is tried whatever its extension). Each image goes
through the run's evaluation transform (``loading.image_transforms``: any size and mode, converted to
the run's channels and size). Files that cannot be decoded (not images, truncated, damaged) are named
on stderr, skipped and counted.

Writes a CSV sorted by kappa (path, kappa, rank, percentile; rank 1 = lowest kappa), prints a summary
(count, kappa quantiles, the 5 lowest and highest) and draws a grid of the lowest- and highest-kappa
images with kappa under each.

The percentile places an image among the run's own held-out images: the share of their kappa values
below it, ties counted half (``percentileofscore(kind="mean")``), so 50 is a typical held-out image and
0 is below all of them. Their kappa is what the uncertainty analysis reads (``features.extract`` over
the held-out split, eval mode): taken from the run's ``features.pt`` when it holds the same checkpoint
step, else computed once and cached in ``heldout_kappa.pt``.
"""

from __future__ import annotations

import csv
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import UNREADABLE_FILE_ERRORS, ConfigError
from .loading import LoadedModel, _load

SUMMARY_COUNT = 5  # lowest and highest images printed
GRID_COLUMNS = 8  # lowest- and highest-kappa images drawn (one row each)
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
HELDOUT_CACHE = "heldout_kappa.pt"


# ---------------------------------------------------------------------------- which files
def image_extensions() -> frozenset[str]:
    """The file extensions of the formats PIL can open (not those it can only write, such as PDF)."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def select_images(paths: list[str]) -> tuple[list[Path], int]:
    """(image files in the order given, folders sorted and searched recursively; files not counted
    twice, the number of files in the folders left out for their extension). A missing path is a
    ConfigError."""
    extensions = image_extensions()
    selected, seen, ignored = [], set(), 0

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            selected.append(path)

    for name in paths:
        path = Path(name).expanduser()
        if path.is_file():
            add(path)
        elif path.is_dir():
            for folder, subfolders, files in os.walk(path):
                subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
                for file in sorted(files):
                    if file.startswith("."):
                        continue
                    if os.path.splitext(file)[1].lower() in extensions:
                        add(Path(folder) / file)
                    else:
                        ignored += 1
        else:
            raise ConfigError(f"{name}: no such file or directory")
    return selected, ignored


def read_image(path: Path, prepare) -> tuple[torch.Tensor | None, str | None]:
    """(``prepare(image)``, None), or (None, why not) for a file PIL cannot decode in full."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later
            return prepare(image), None
    except Exception as error:  # PIL raises many kinds (OSError, SyntaxError, ValueError, DecompressionBombError...)
        return None, (f"{type(error).__name__}: {error}".splitlines() or [""])[0]


# ---------------------------------------------------------------------------- kappa
@torch.no_grad()
def score_files(
    model: LoadedModel, files: list[Path], batch_size: int, report_skip
) -> tuple[list[Path], torch.Tensor, list]:
    """(the files scored, their kappa (n,), (path, reason) of those skipped). Files are decoded in a
    thread pool (PIL releases the GIL while decoding) one batch at a time; ``report_skip(path, reason)``
    is called as each unreadable file is met."""
    from tqdm import tqdm

    scored, kappas, skipped = [], [], []
    bar = tqdm(total=len(files), desc="scoring", unit="image", file=sys.stderr, dynamic_ncols=True,
               disable=True if len(files) <= batch_size else None)  # a bar for several batches, on a terminal
    try:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for start in range(0, len(files), batch_size):
                chunk = files[start : start + batch_size]
                images = []
                for path, (image, reason) in zip(chunk, pool.map(lambda p: read_image(p, model.prepare), chunk)):
                    if image is None:
                        skipped.append((path, reason))
                        report_skip(path, reason)
                    else:
                        scored.append(path)
                        images.append(model.normalize(image))
                if images:
                    kappas.append(model.kappa(torch.stack(images), batch_size))
                bar.update(len(chunk))
    finally:
        bar.close()
    return scored, (torch.cat(kappas) if kappas else torch.empty(0)), skipped


def heldout_kappa(model: LoadedModel, run_dir: Path) -> torch.Tensor:
    """kappa (N,) of the run's held-out images at the loaded checkpoint's step (see the module docstring)."""
    for name, key in (("features.pt", "test_kappa"), (HELDOUT_CACHE, "kappa")):
        path = run_dir / name
        if path.is_file():
            try:
                cached = torch.load(path, map_location="cpu", weights_only=True)
            except UNREADABLE_FILE_ERRORS:  # a damaged cache is computed again
                continue
            if isinstance(cached, dict) and cached.get("step") == model.step and cached.get(key) is not None:
                return cached[key]
    from .data import build_datasets
    from .features import extract

    cfg = model.cfg
    _, _, heldout = build_datasets(cfg)
    _, kappa, _ = extract(model.network, heldout, cfg.eval_batch_size, model.device, cfg.workers)
    try:
        torch.save({"step": model.step, "kappa": kappa}, run_dir / HELDOUT_CACHE)
    except OSError:  # a read-only run directory: computed again next time
        pass
    return kappa


def percentiles(kappa: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """Percentile of each kappa among ``reference``: 100 (#below + #equal / 2) / N."""
    ref = np.sort(reference.double().numpy())
    k = kappa.double().numpy()
    below, up_to = np.searchsorted(ref, k, side="left"), np.searchsorted(ref, k, side="right")
    return 100.0 * (below + up_to) / (2 * len(ref))


# ---------------------------------------------------------------------------- outputs
def write_csv(path: Path, files: list[Path], kappa: torch.Tensor, pct: np.ndarray | None) -> None:
    """One row per scored image, lowest kappa first; ``percentile`` is empty when unknown."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "kappa", "rank", "percentile"])
        for rank, i in enumerate(torch.argsort(kappa, stable=True).tolist(), start=1):
            writer.writerow([str(files[i]), f"{kappa[i].item():.6g}", rank, "" if pct is None else f"{pct[i]:.2f}"])


def summary_text(files, kappa, pct, skipped, ignored, model, reference, output, grid) -> str:
    order = torch.argsort(kappa, stable=True).tolist()
    quantiles = torch.quantile(kappa.double(), torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
    names = ["min", *(f"{100 * q:g}%" for q in QUANTILES[1:-1]), "max"]
    checkpoint = f"{model.source.parent} ({model.source.name}, step {model.step})"
    lines = [f"scored {len(files)} image(s) with {checkpoint} -> {output}"]
    left_out = [f"skipped {len(skipped)} unreadable file(s) (named above)"] if skipped else []
    left_out += [f"left out {ignored} file(s) without an image extension"] if ignored else []
    if left_out:
        lines.append("; ".join(left_out))
    lines.append("kappa: " + ", ".join(f"{n} {v:.4g}" for n, v in zip(names, quantiles)))
    if reference is not None:
        lines.append(
            f"percentile: among the run's {len(reference)} held-out images (median kappa "
            f"{reference.double().median().item():.4g}); 50 = typical, 0 = below all of them"
        )

    def row(i: int) -> str:
        shown = f"  percentile {pct[i]:6.2f}" if pct is not None else ""
        return f"  {kappa[i].item():10.4g}{shown}  {files[i]}"

    count = min(SUMMARY_COUNT, len(order))
    lines.append(f"{count} lowest kappa (most uncertain):")
    lines += [row(i) for i in order[:count]]
    lines.append(f"{count} highest kappa:")
    lines += [row(i) for i in order[::-1][:count]]
    lines.append(f"grid: {grid}")
    return "\n".join(lines)


def grid_choice(kappa: torch.Tensor, columns: int = GRID_COLUMNS) -> tuple[list[int], list[int]]:
    """Indices of the lowest- and highest-kappa images to draw (lowest first / highest first), never
    the same image in both rows."""
    order = torch.argsort(kappa, stable=True).tolist()
    count = min(columns, max(1, len(order) // 2))
    return order[:count], order[::-1][: min(count, len(order) - count)]


def draw_grid(path: Path, model: LoadedModel, files: list[Path], kappa: torch.Tensor) -> None:
    """Two rows: the lowest-kappa images (top) and the highest (bottom), as the model sees them (after
    the resize and crop), each with its kappa underneath."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    from .uncertainty import resize_for_grid

    lowest, highest = grid_choice(kappa)
    rows = [(name, indices) for name, indices in (("lowest kappa", lowest), ("highest kappa", highest)) if indices]
    columns = max(len(indices) for _, indices in rows)
    figure, axes = plt.subplots(len(rows), columns, figsize=(columns * 1.4, len(rows) * 1.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (name, indices) in enumerate(rows):
        axes[r, 0].set_title(name, loc="left", fontsize=9)
        for c, i in enumerate(indices):
            image, _ = read_image(files[i], model.prepare)
            ax = axes[r, c]
            if image is not None:
                image = resize_for_grid(image[None])[0].clamp(0, 1)
                if image.shape[0] == 1:  # as the report draws them: dark strokes on a light ground
                    ax.imshow(image[0].numpy(), cmap="gray_r" if image.mean() < 0.5 else "gray", vmin=0, vmax=1)
                else:
                    ax.imshow(image.permute(1, 2, 0).numpy())
            ax.text(0.5, -0.06, f"{kappa[i].item():.4g}", transform=ax.transAxes, ha="center", va="top", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ---------------------------------------------------------------------------- command line
def _writable_file(path: Path, option: str) -> Path:
    path = path.expanduser()
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a directory")
    if not path.absolute().parent.is_dir():
        raise ConfigError(f"{option} {path}: the folder {path.absolute().parent} does not exist")
    return path


def main(args) -> None:
    if args.batch_size is not None and (args.batch_size < 1):
        raise ConfigError(f"--batch-size {args.batch_size}: must be an integer >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    output = _writable_file(Path(args.output), "--output")
    grid = _writable_file(Path(args.grid) if args.grid else output.with_name(output.stem + "_grid.png"), "--grid")
    run_dir = Path(args.run).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(f"{args.run} is not a pretraining run directory")
    model = _load(run_dir, args.device)
    for path, reason in model.passed_over:
        print(f"vi-simsiam: warning: {path} does not verify ({reason}); using {model.source.name}", file=sys.stderr)
    if not model.has_kappa:
        raise ConfigError(f"{run_dir} was trained with distribution 'none' (plain SimSiam): it has no kappa")
    files, ignored = select_images(args.paths)
    if not files:
        raise ConfigError(
            f"no image files in {', '.join(args.paths)} (searched for the formats PIL opens"
            + (f"; {ignored} other file(s) left out)" if ignored else ")")
        )

    def report_skip(path: Path, reason: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"vi-simsiam: skipping unreadable image {path} ({reason})", file=sys.stderr)

    scored, kappa, skipped = score_files(model, files, args.batch_size or model.cfg.eval_batch_size, report_skip)
    if not scored:
        raise ConfigError(f"none of the {len(files)} image file(s) could be read (each named above)")

    reference = None
    try:
        reference = heldout_kappa(model, run_dir)
    except ConfigError as error:  # e.g. a CIFAR / image-folder run whose data is not here
        print(f"vi-simsiam: warning: percentiles left empty: the run's held-out images cannot be read ({error})",
              file=sys.stderr)
    pct = percentiles(kappa, reference) if reference is not None and len(reference) else None

    write_csv(output, scored, kappa, pct)
    draw_grid(grid, model, scored, kappa)
    print(summary_text(scored, kappa, pct, skipped, ignored, model, reference, output, grid))
