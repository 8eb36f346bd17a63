"""Issue 15, item 2: a user's mistake in any command is one line on stderr and exit status 2.

Every command that reads a run (knn, linear, uncertainty, score) is tried against every kind of bad run
path (missing, a file, an empty folder, damaged or invalid config.json, a checkpoint that is truncated
or was never written) and against bad option values; pretrain against bad paths and devices. In process
(``cli.main``), so a traceback would show up as an exception or in the captured stderr.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vi_simsiam import cli

TINY = ["--dim", "32", "--pred-dim", "16", "--proj-hidden-dim", "32", "--kappa-hidden-dim", "16", "--threads", "1"]
RUN_COMMANDS = ("knn", "linear", "uncertainty", "score")
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="'--device cuda' is a mistake only without a GPU")


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    args = ["pretrain", *TINY, "--epochs", "1", "--batch-size", "256", "--no-evaluate", "--output-dir", str(run_dir)]
    threads = torch.get_num_threads()
    with torch.random.fork_rng():
        try:
            assert cli.main(args) == 0
        finally:
            torch.set_num_threads(threads)
    return run_dir


def _copy(run: Path, target: Path) -> Path:
    shutil.copytree(run, target)
    return target


def _bad_runs(good_run: Path, tmp: Path) -> dict[str, Path]:
    """name -> a path that is not a usable run."""
    (tmp / "a-file").write_text("hello")
    (tmp / "empty").mkdir()
    runs = {"missing": tmp / "nowhere", "a file": tmp / "a-file", "empty folder": tmp / "empty"}

    damaged_config = _copy(good_run, tmp / "damaged-config")
    (damaged_config / "config.json").write_text("{ not json")
    runs["damaged config.json"] = damaged_config

    invalid_config = _copy(good_run, tmp / "invalid-config")
    values = json.loads((invalid_config / "config.json").read_text())
    values["dim"] = 1
    (invalid_config / "config.json").write_text(json.dumps(values))
    runs["invalid config.json"] = invalid_config

    truncated = _copy(good_run, tmp / "truncated")
    for path in truncated.glob("checkpoint*.pt"):
        path.write_bytes(path.read_bytes()[:1000])
    runs["every checkpoint truncated"] = truncated

    no_checkpoint = _copy(good_run, tmp / "no-checkpoint")
    for path in no_checkpoint.glob("checkpoint*"):
        path.unlink()
    runs["no checkpoint"] = no_checkpoint
    return runs


def _assert_one_line_error(code: int, err: str, what: str) -> None:
    assert code == 2, f"{what}: exit status {code}; stderr: {err}"
    assert "Traceback" not in err, f"{what}: {err}"
    errors = [line for line in err.splitlines() if line.startswith("vi-simsiam: error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), f"{what}: {err}"


def _command(name: str, run: Path, image_dir: Path, *options: str) -> list[str]:
    extra = [str(image_dir), "--output", str(image_dir.parent / "scores.csv")] if name == "score" else []
    return [name, str(run), *extra, *options]


@pytest.fixture
def image_dir(tmp_path) -> Path:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (8, 8), 128).save(folder / "grey.png")
    return folder


@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_a_bad_run_path_is_one_line(command, good_run, image_dir, tmp_path, capsys):
    for what, run in _bad_runs(good_run, tmp_path).items():
        code = cli.main(_command(command, run, image_dir, "--threads", "1"))
        _assert_one_line_error(code, capsys.readouterr().err, f"{command} on {what}")


BAD_OPTIONS = {
    "knn": [["--k", "0"], ["--temperature", "-1"], ["--temperature", "nan"], ["--device", "cuda"], ["--device", "tpu"],
            ["--threads", "0"]],
    "linear": [["--linear-epochs", "0"], ["--linear-lr", "-0.1"], ["--device", "cuda"], ["--threads", "-2"]],
    "uncertainty": [["--k", "-3"], ["--linear-epochs", "-1"], ["--device", "cuda"]],
    "score": [["--batch-size", "0"], ["--device", "cuda"], ["--device", "gpu"], ["--threads", "0"]],
}


@NO_GPU
@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_bad_options_are_one_line(command, good_run, image_dir, capsys):
    for options in BAD_OPTIONS[command]:
        code = cli.main(_command(command, good_run, image_dir, *options))
        _assert_one_line_error(code, capsys.readouterr().err, f"{command} {' '.join(options)}")


@NO_GPU
def test_pretrain_bad_paths_and_devices_are_one_line(good_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("hello")
    damaged = _copy(good_run, tmp_path / "damaged")
    for path in damaged.glob("checkpoint*.pt"):
        path.write_bytes(b"garbage")
    cases = {
        "imagefolder without its folder": ["--preset", "imagefolder", "--data-dir", str(tmp_path / "nowhere")],
        "cifar10 data dir is a file": ["--preset", "cifar10", "--data-dir", str(tmp_path / "a-file")],
        "output dir under a file": ["--output-dir", str(tmp_path / "a-file" / "run")],
        "resume from a missing file": ["--resume", str(tmp_path / "nowhere.pt")],
        "resume from a file that is not a checkpoint": ["--resume", str(tmp_path / "a-file")],
        "resume a run whose checkpoints are damaged": ["--resume", "auto", "--output-dir", str(damaged)],
        "device cuda": ["--device", "cuda"],
        "device tpu": ["--device", "tpu"],
    }
    for what, options in cases.items():
        code = cli.main(["pretrain", *TINY, "--epochs", "1", *options])
        _assert_one_line_error(code, capsys.readouterr().err, f"pretrain: {what}")
