"""``vi-simsiam score`` and ``vi_simsiam.load`` / ``export`` on a tiny digits run made here (one epoch).

The images are held-out digits written as files of several sizes, modes and formats, beside files
that are not images, truncated, or fail only when decoded; the checks compare with the model and the
held-out kappa computed by the evaluation code (``evaluation.load_run`` + ``features.extract``).
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import percentileofscore

import vi_simsiam
from vi_simsiam import checkpoint as ckpt
from vi_simsiam import cli, scoring
from vi_simsiam import config as config_lib
from vi_simsiam.data import load_digits_split
from vi_simsiam.errors import ConfigError
from vi_simsiam.evaluation import load_run
from vi_simsiam.features import extract
from vi_simsiam.loading import convert_mode

TINY = ["--dim", "32", "--pred-dim", "16", "--proj-hidden-dim", "32", "--kappa-hidden-dim", "16", "--threads", "1",
        "--epochs", "1", "--warmup-epochs", "1", "--batch-size", "128", "--no-evaluate"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A VI-SimSiam run trained for one epoch, and a plain SimSiam run (untrained weights, written directly)."""
    root = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    try:
        assert cli.main(["pretrain", *TINY, "--output-dir", str(root / "vi")]) == 0
    finally:
        torch.set_num_threads(threads)
    simsiam = root / "simsiam"
    simsiam.mkdir()
    cfg = config_lib.resolve("digits", distribution="none", dim=32, pred_dim=16, proj_hidden_dim=32)
    config_lib.save(cfg, simsiam / "config.json")
    ckpt.save_rotating({"model": vi_simsiam.build_model(cfg).state_dict(), "step": 0}, simsiam, keep=1)
    return root


@pytest.fixture(scope="module")
def heldout(runs):
    """(held-out images (450, 1, 8, 8), their kappa and features as the evaluation code computes them)."""
    run = load_run(runs / "vi", "cpu")
    features, kappa, _ = extract(run.model, run.eval_test_set, 512, "cpu")
    _, (images, _) = load_digits_split()
    return images, kappa, features


def digit(images, i: int) -> np.ndarray:
    return (images[i, 0].numpy() * 255).round().astype(np.uint8)


def make_images(root: Path, images) -> tuple[list[Path], list[Path]]:
    """(readable image files, unreadable ones) in ``root``; also a text file and a hidden file, left out."""
    (root / "nested" / "deeper").mkdir(parents=True)
    good = []
    for i in range(6):  # the run's own format: 8x8 greyscale PNG
        good.append(root / f"digit{i}.png")
        Image.fromarray(digit(images, i)).save(good[-1])
    big = np.kron(digit(images, 6), np.ones((5, 5), np.uint8))  # 40x40, RGB JPEG
    good.append(root / "nested" / "big_rgb.jpg")
    Image.fromarray(big).convert("RGB").save(good[-1], quality=95)
    good.append(root / "nested" / "wide_rgba.png")  # 16x24 with alpha
    Image.fromarray(np.kron(digit(images, 7), np.ones((2, 3), np.uint8))).convert("RGBA").save(good[-1])
    good.append(root / "nested" / "deeper" / "sixteen_bit.png")
    Image.fromarray(digit(images, 8).astype(np.uint16) * 257).save(good[-1])
    good.append(root / "nested" / "deeper" / "palette.gif")
    Image.fromarray(digit(images, 9)).convert("P").save(good[-1])
    good.append(root / "nested" / "upper.BMP")
    Image.fromarray(digit(images, 10)).save(good[-1], format="BMP")
    for i in range(11, 14):
        good.append(root / "nested" / f"more{i}.png")
        Image.fromarray(digit(images, i)).save(good[-1])

    bad = [root / "truncated.png", root / "nested" / "page.jpg", root / "nested" / "cut.jpg"]
    png = good[0].read_bytes()
    bad[0].write_bytes(png[: len(png) // 2])
    bad[1].write_text("<html>404 not found</html>")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    bad[2].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 3 // 4])  # fails only when decoded
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_text("a hidden file: left out")
    return good, bad


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------- score
def test_score_writes_sorted_csv_summary_and_grid(runs, heldout, tmp_path, capsys, restore_torch_globals):
    images, heldout_kappa, _ = heldout
    good, bad = make_images(tmp_path / "images", images)
    extra = tmp_path / "extra.png"  # a file given by name, and one given twice (also inside the folder)
    Image.fromarray(digit(images, 20)).resize((13, 13)).save(extra)
    output = tmp_path / "out" / "scores.csv"
    output.parent.mkdir()
    code = cli.main(["score", str(runs / "vi"), str(tmp_path / "images"), str(extra), str(good[0]),
                     "--output", str(output), "--batch-size", "4", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err

    rows = read_csv(output)
    assert list(rows[0]) == ["path", "kappa", "rank", "percentile"]
    assert sorted(row["path"] for row in rows) == sorted(map(str, [*good, extra]))
    kappas = [float(row["kappa"]) for row in rows]
    assert kappas == sorted(kappas) and [int(row["rank"]) for row in rows] == list(range(1, len(rows) + 1))

    model = vi_simsiam.load(runs / "vi", device="cpu")
    expected = model.kappa([Image.open(row["path"]) for row in rows])
    np.testing.assert_allclose(kappas, expected.numpy(), rtol=1e-5)
    for row, k in zip(rows, expected.tolist()):
        assert float(row["percentile"]) == pytest.approx(percentileofscore(heldout_kappa.numpy(), k, kind="mean"),
                                                         abs=0.006)
    assert (runs / "vi" / scoring.HELDOUT_CACHE).is_file()

    out = captured.out
    assert f"scored {len(rows)} image(s)" in out and "skipped 3 unreadable file(s)" in out
    assert "left out 1 file(s) without an image extension" in out and "among the run's 450 held-out images" in out
    low = out.split("5 lowest kappa")[1].split("5 highest kappa")[0]
    assert [line.split()[-1] for line in low.strip().splitlines()[1:]] == [row["path"] for row in rows[:5]]
    high = out.split("5 highest kappa")[1].split("grid:")[0]
    assert [line.split()[-1] for line in high.strip().splitlines()[1:]] == [row["path"] for row in rows[::-1][:5]]
    grid = tmp_path / "out" / "scores_grid.png"
    assert f"grid: {grid}" in out and grid.stat().st_size > 5000
    with Image.open(grid) as image:
        assert image.size[0] > image.size[1] > 100

    err_lines = captured.err.strip().splitlines()
    assert len(err_lines) == 3 and all(line.startswith("vi-simsiam: skipping unreadable image") for line in err_lines)
    assert all(any(str(path) in line for line in err_lines) for path in bad) and "notes.txt" not in captured.err


def test_score_explicit_grid_path_and_the_heldout_cache_is_reused(runs, tmp_path, capsys, restore_torch_globals):
    (tmp_path / "one").mkdir()
    _, (images, _) = load_digits_split()
    Image.fromarray(digit(images, 0)).save(tmp_path / "one" / "a.png")
    grid = tmp_path / "grid.png"
    args = ["score", str(runs / "vi"), str(tmp_path / "one"), "--output", str(tmp_path / "s.csv"), "--grid", str(grid)]
    assert cli.main([*args, "--threads", "1"]) == 0
    assert grid.stat().st_size > 1000 and len(read_csv(tmp_path / "s.csv")) == 1
    assert "1 lowest kappa" in capsys.readouterr().out
    cache = runs / "vi" / scoring.HELDOUT_CACHE
    cached = torch.load(cache, weights_only=True)
    torch.save({**cached, "kappa": torch.full_like(cached["kappa"], 1e9)}, cache)  # the cache is what is read
    try:
        assert cli.main([*args, "--threads", "1"]) == 0
        assert read_csv(tmp_path / "s.csv")[0]["percentile"] == "0.00"
    finally:
        torch.save(cached, cache)


@pytest.mark.parametrize(
    "case, message",
    [
        ("not_a_run", "is not a pretraining run directory"),
        ("missing_path", "no such file or directory"),
        ("empty_selection", "no image files in"),
        ("nothing_readable", "none of the 2 image file(s) could be read"),
        ("batch_size", "--batch-size 0: must be an integer >= 1"),
        ("device", "--device 'tpu': must be one of auto, cpu, cuda"),
        ("cuda", "--device cuda: no CUDA device is available"),
        ("simsiam", "has no kappa"),
        ("output_folder", "does not exist"),
    ],
)
def test_score_errors_are_one_line(runs, tmp_path, capsys, case, message, restore_torch_globals):
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images here")
    run, paths, options = runs / "vi", [str(folder)], []
    if case == "not_a_run":
        run = tmp_path
        Image.new("L", (8, 8)).save(folder / "a.png")
    elif case == "missing_path":
        paths = [str(folder), str(tmp_path / "nowhere")]
    elif case == "nothing_readable":
        (folder / "a.png").write_text("not a png")
        (folder / "b.jpg").write_bytes(b"\xff\xd8\xff")
    elif case == "simsiam":
        run = runs / "simsiam"
    elif case != "empty_selection":
        Image.new("L", (8, 8)).save(folder / "a.png")
        options = {"batch_size": ["--batch-size", "0"], "device": ["--device", "tpu"], "cuda": ["--device", "cuda"],
                   "output_folder": ["--output", str(tmp_path / "missing" / "s.csv")]}.get(case, [])
    output = [] if case == "output_folder" else ["--output", str(tmp_path / "s.csv")]
    assert cli.main(["score", str(run), *paths, *output, "--threads", "1", *options]) == 2
    captured = capsys.readouterr()
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("vi-simsiam: error: ") and message in last, captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    expected_lines = 3 if case == "nothing_readable" else 1  # each unreadable file named, then the error
    assert captured.err.count("\n") == expected_lines
    assert not (tmp_path / "s.csv").exists()


# ---------------------------------------------------------------------------- load / export
def test_load_and_export_round_trip(runs, heldout, tmp_path):
    images, heldout_kappa, heldout_features = heldout
    model = vi_simsiam.load(runs / "vi", device="cpu")
    assert model.source == runs / "vi" / "checkpoint.pt" and model.has_kappa and model.feature_dim == 128
    kappa, features = model.kappa(images), model.embed(images)
    assert kappa.shape == (450,) and features.shape == (450, 128)
    assert torch.equal(kappa, heldout_kappa) and torch.equal(features, heldout_features)

    path = vi_simsiam.export(runs / "vi", tmp_path / "digits.pt")
    payload = torch.load(path, weights_only=True)  # plain tensors and values: no pickled objects
    assert set(payload) == {"format", "version", "config", "model", "step", "exported_from"}
    assert payload["step"] == model.step and payload["config"]["dim"] == 32
    assert path.stat().st_size < (runs / "vi" / "checkpoint.pt").stat().st_size  # no optimizer state
    exported = vi_simsiam.load(path, device="cpu")
    assert exported.source == path and exported.step == model.step
    assert torch.equal(exported.kappa(images), kappa) and torch.equal(exported.embed(images), features)

    # PIL images of any size and mode through .transform: an 8x8 PNG of a held-out digit is that digit
    pil = [Image.fromarray(digit(images, i)) for i in range(5)]
    transformed = torch.stack([exported.transform(image) for image in pil])
    assert transformed.shape == (5, 1, 8, 8) and (transformed - images[:5]).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(exported.kappa(pil), exported.kappa(transformed))
    torch.testing.assert_close(exported.kappa(pil, batch_size=2), exported.kappa(pil))
    big = [Image.fromarray(np.kron(digit(images, 0), np.ones((4, 4), np.uint8))).convert("RGB")]
    assert exported.transform(big[0]).shape == (1, 8, 8) and exported.kappa(big).shape == (1,)
    assert exported.kappa([]).shape == (0,) and exported.embed([]).shape == (0, 128)


def test_load_takes_the_newest_checkpoint_that_verifies(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "vi", run)
    newest = run / "checkpoint.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    with pytest.warns(UserWarning, match="checkpoint.pt does not verify"):
        model = vi_simsiam.load(run, device="cpu")
    assert model.source == run / "checkpoint.1.pt" and model.step == 0
    with pytest.warns(UserWarning, match="exporting"):
        path = vi_simsiam.export(run, tmp_path / "x.pt")
    assert vi_simsiam.load(path).step == 0


def test_load_refuses_what_it_cannot_read(runs, tmp_path):
    with pytest.raises(ConfigError, match="no such run directory or exported file"):
        vi_simsiam.load(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="not a pretraining run directory"):
        vi_simsiam.load(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="not a file written by vi_simsiam.export"):
        vi_simsiam.load(tmp_path / "junk.pt")
    with pytest.raises(ConfigError, match="not a file written by vi_simsiam.export"):
        vi_simsiam.load(runs / "vi" / "checkpoint.pt")  # a training checkpoint: its run directory is what loads
    with pytest.raises(ConfigError, match="--device 'gpu'"):
        vi_simsiam.load(runs / "vi", device="gpu")

    simsiam = vi_simsiam.load(runs / "simsiam", device="cpu")
    assert not simsiam.has_kappa and simsiam.embed(torch.zeros(2, 1, 8, 8)).shape == (2, 128)
    with pytest.raises(ConfigError, match="has no kappa"):
        simsiam.kappa(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"expected a transformed batch \(N, 1, H, W\)"):
        simsiam.embed(torch.zeros(2, 3, 8, 8))
    with pytest.raises(TypeError, match="a list of PIL images"):
        simsiam.embed(Image.new("L", (8, 8)))


# ---------------------------------------------------------------------------- pieces
def test_convert_mode_scales_deep_greyscale_instead_of_clipping():
    ramp = np.arange(0, 65536, 257, dtype=np.uint16)[:256].reshape(16, 16)  # 0, 257, ... = 0..255 in 16 bits
    assert np.array_equal(np.asarray(convert_mode(Image.fromarray(ramp), "L")), ramp // 257)
    as_int = Image.fromarray(ramp.astype(np.int32))
    assert np.array_equal(np.asarray(convert_mode(as_int, "L")), ramp // 257)
    small = Image.fromarray(np.full((4, 4), 100, np.int32))  # values within 0-255: read as 8-bit
    assert np.asarray(convert_mode(small, "L")).max() == 100
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert convert_mode(rgba, "RGB").mode == "RGB" and convert_mode(rgba, "L").mode == "L"


def test_percentiles_count_ties_half():
    reference = torch.tensor([1.0, 2.0, 3.0, 4.0])
    result = scoring.percentiles(torch.tensor([0.0, 2.0, 5.0, 2.5]), reference)
    np.testing.assert_allclose(result, [0.0, 37.5, 100.0, 50.0])


def test_select_images_order_duplicates_and_what_is_left_out(tmp_path):
    for name in ("b/z.png", "b/a.JPG", "a.png", ".hidden/x.png", "b/.y.png", "b/readme.md", "b/c/d.webp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "named.dat").write_bytes(b"")
    files, ignored = scoring.select_images([str(tmp_path), str(tmp_path / "a.png"), str(tmp_path / "named.dat")])
    relative = [str(path.relative_to(tmp_path)) for path in files]
    assert relative == ["a.png", "b/a.JPG", "b/z.png", "b/c/d.webp", "named.dat"] and ignored == 2
    with pytest.raises(ConfigError, match="no such file or directory"):
        scoring.select_images([str(tmp_path / "missing")])


def test_grid_choice_never_draws_an_image_twice():
    assert scoring.grid_choice(torch.tensor([3.0])) == ([0], [])
    assert scoring.grid_choice(torch.tensor([3.0, 1.0, 2.0])) == ([1], [0])
    low, high = scoring.grid_choice(torch.arange(20.0))
    assert low == list(range(8)) and high == list(range(19, 11, -1))
