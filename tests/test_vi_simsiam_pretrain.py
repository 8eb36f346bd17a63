"""vi_simsiam pretraining: learning on digits, bad configurations, SIGKILL/SIGTERM + resume, DDP (gloo).

Runs are tiny (digits, a 32-dimensional embedding, one CPU thread) so that the whole file takes
well under two minutes on two cores. Subprocess runs use ``python -m vi_simsiam``, the real CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vi_simsiam import build_model, cli
from vi_simsiam.checkpoint import CHECKPOINT_NAME
from vi_simsiam.config import Config

REPO = Path(__file__).resolve().parents[1]

# A model small enough that a digits epoch takes a fraction of a second on one thread.
TINY = ["--dim", "32", "--pred-dim", "16", "--proj-hidden-dim", "32", "--kappa-hidden-dim", "16", "--threads", "1"]
EXACT = [
    *TINY,
    "--deterministic",
    "--no-evaluate",
    "--batch-size",
    "64",
    "--epochs",
    "4",
    "--warmup-epochs",
    "1",
    "--log-every",
    "5",
]
STEPS_PER_EPOCH = 1347 // 64


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_cli(args, cwd, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vi_simsiam", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / CHECKPOINT_NAME, map_location="cpu", weights_only=False)


def assert_bitwise_equal(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), (
            f"{what}: {key} differs (max |diff| {(a[key].double() - b[key].double()).abs().max()})"
        )


def epochs_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum('"kind": "epoch"' in line for line in path.read_text().splitlines())


# ---------------------------------------------------------------------------- learning
def test_loss_decreases_and_main_job_summary(tmp_path, capsys, restore_torch_globals):
    run_dir = tmp_path / "run"
    code = cli.main(
        [
            "pretrain",
            *TINY,
            "--epochs",
            "4",
            "--warmup-epochs",
            "1",
            "--batch-size",
            "128",
            "--output-dir",
            str(run_dir),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "kNN top-1" in printed and "kappa on held-out images" in printed
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "epoch"]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert all(r["z_std"] > 0.5 for r in rows if r["kind"] == "epoch"), "collapse monitor: outputs collapsed"
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["num_test"] == 450 and result["knn_top1"] > 0.8 and result["linear_top1"] > 0.8
    assert 0 < result["kappa"]["min"] <= result["kappa"]["median"] <= result["kappa"]["max"]
    assert 0 <= result["auroc_knn"] <= 1 and set(result["corruption_ratio"]) == {"crop", "blur", "noise", "occlusion"}
    lines = (run_dir / "test_predictions.csv").read_text().splitlines()
    assert len(lines) == 451 and lines[0] == "index,label,kappa,knn_prediction,linear_prediction"
    assert (run_dir / "report.md").is_file() and "AUROC" in printed
    config = json.loads((run_dir / "config.json").read_text())
    assert config["epochs"] == 4 and config["distribution"] == "power_spherical" and config["dim"] == 32
    assert (run_dir / "metrics.csv").read_text().count("\n") == 5
    assert any((run_dir / "tb").iterdir())

    # An earlier run is never overwritten: the same --output-dir is refused, and nothing changes.
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert cli.main(["pretrain", *TINY, "--output-dir", str(run_dir)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


# ---------------------------------------------------------------------------- bad configuration
@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "mnist"], "unknown preset 'mnist'"),
        (["--preset", "cifar10"], "needs --data-dir"),
        (["--preset", "cifar10", "--data-dir", "{tmp}/missing"], "does not exist"),
        (["--preset", "cifar10", "--data-dir", "{tmp}"], "no batch files"),
        (["--preset", "imagefolder", "--data-dir", "{tmp}"], "is not a directory"),
        (["--batch-size", "4096"], "larger than the data set (1347 training images)"),
        (["--resume", "auto", "--output-dir", "{tmp}"], "which is not empty; nothing to resume"),
        (["--resume", "auto"], "nothing to resume"),
        (["--resume", "{tmp}/nowhere/checkpoint.pt"], "no checkpoint at"),
        (["--output-dir", "{tmp}/a-file/run"], "not writable"),
        (["--amp", "fp16", "--device", "cpu"], "needs a CUDA device"),
    ],
)
def test_bad_configuration_is_a_clear_error(args, message, tmp_path, capsys, monkeypatch, restore_torch_globals):
    monkeypatch.chdir(tmp_path)  # --resume auto searches ./runs
    (tmp_path / "a-file").write_text("not a directory")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert cli.main(["pretrain", *TINY, "--epochs", "1", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vi-simsiam: error: ") and message in err, err
    assert "Traceback" not in err
    # a refused run leaves nothing behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_read_only_output_dir(tmp_path, capsys, restore_torch_globals):
    """A directory the process cannot write into: a chmod 500 folder, or for root (who writes through
    permission bits) a path under /proc, where nobody can create anything."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    unwritable = Path("/proc") / "vissiam-test" if hasattr(os, "geteuid") and os.geteuid() == 0 else locked
    try:
        assert cli.main(["pretrain", *TINY, "--output-dir", str(unwritable / "run")]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_bad_configuration_from_the_console(tmp_path):
    """The real entry point: exit status 2 and one line on stderr."""
    done = run_cli(["pretrain", "--preset", "nope"], cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("vi-simsiam: error: unknown preset 'nope'")


# ---------------------------------------------------------------------------- kill and resume
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    done = run_cli(["pretrain", *EXACT, "--output-dir", str(run_dir)], cwd=run_dir.parent)
    assert done.returncode == 0, done.stderr
    return final_state(run_dir)


def _start_and_interrupt(run_dir: Path, sig: int, after_epochs: int, extra_wait: float = 0.0) -> int:
    process = subprocess.Popen(
        [sys.executable, "-m", "vi_simsiam", "pretrain", *EXACT, "--output-dir", str(run_dir)],
        cwd=run_dir.parent,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 240
        while epochs_logged(run_dir) < after_epochs:
            assert process.poll() is None, f"run ended before it could be interrupted: {process.communicate()}"
            assert time.time() < deadline, "run too slow to reach the interruption point"
            time.sleep(0.01)
        time.sleep(extra_wait)
        assert process.poll() is None, "run ended before it could be interrupted"
        process.send_signal(sig)
        process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode


def test_sigkill_then_resume_is_bitwise_equal(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    returncode = _start_and_interrupt(run_dir, signal.SIGKILL, after_epochs=2)
    assert returncode == -signal.SIGKILL
    killed_at = final_state(run_dir)
    assert 2 <= killed_at["epoch"] < 4, "the kill landed after the run finished"
    done = run_cli(["pretrain", *EXACT, "--output-dir", str(run_dir), "--resume", "auto"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    resumed = final_state(run_dir)
    assert resumed["epoch"] == 4 and resumed["step"] == uninterrupted["step"]
    assert_bitwise_equal(resumed["model"], uninterrupted["model"], "model")
    for a, b in zip(resumed["optimizer"]["state"].values(), uninterrupted["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


def test_sigterm_checkpoints_mid_epoch_and_resume_is_bitwise_equal(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    returncode = _start_and_interrupt(run_dir, signal.SIGTERM, after_epochs=1, extra_wait=0.05)
    assert returncode == 128 + signal.SIGTERM
    stopped = final_state(run_dir)
    assert stopped["epoch"] < 4 and stopped["step"] == stopped["epoch"] * STEPS_PER_EPOCH + stopped["batch_in_epoch"]
    done = run_cli(["pretrain", *EXACT, "--output-dir", str(run_dir), "--resume", "auto"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert_bitwise_equal(final_state(run_dir)["model"], uninterrupted["model"], "model")


def test_resume_refuses_a_changed_configuration(uninterrupted, tmp_path, capsys, restore_torch_globals):
    run_dir = tmp_path / "run"
    (run_dir).mkdir()
    (run_dir / "config.json").write_text(json.dumps(uninterrupted["config"]))
    torch.save(uninterrupted, run_dir / CHECKPOINT_NAME)
    assert cli.main(["pretrain", "--output-dir", str(run_dir), "--resume", "auto", "--lr", "0.5"]) == 2
    assert "--lr 0.5 differs from the run being resumed" in capsys.readouterr().err


# ---------------------------------------------------------------------------- DDP
DDP_COMMON = [
    *TINY,
    "--deterministic",
    "--no-evaluate",
    "--dtype",
    "float64",
    "--batch-size",
    "448",
    "--epochs",
    "3",
    "--warmup-epochs",
    "1",
]
DDP_STEPS = 3 * (1347 // 448)


def torchrun_command(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *args,
    ]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    """An uninterrupted torchrun run: 2 gloo processes, DDP_COMMON."""
    run_dir = tmp_path_factory.mktemp("ddp") / "two"
    command = torchrun_command("-m", "vi_simsiam", "pretrain", *DDP_COMMON, "--output-dir", str(run_dir))
    done = subprocess.run(command, cwd=run_dir.parent, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "2 process(es)" in done.stdout
    return run_dir


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(two_process_run, tmp_path):
    """torchrun, 2 gloo processes x 224 images = 1 process x 448 images, 9 SGD steps, in float64.

    Same global batches and views (``GlobalBatchSampler``, per-sample seeds), synced batch norm,
    gradients averaged by DDP: the only difference is the order of floating-point sums.
    Tolerance: every weight within 1e-9 of the distance it moved in training (measured ~1e-12).
    In float32 the runs differ by ~0.4% of one step's update even after a single step — the
    backbone gradients are sums of nearly cancelling per-image terms — hence float64 here.
    """
    one = tmp_path / "one"
    done = run_cli(["pretrain", *DDP_COMMON, "--output-dir", str(one)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    a, b = final_state(one), final_state(two_process_run)
    assert a["step"] == b["step"] == DDP_STEPS
    cfg = Config(**a["config"])
    torch.manual_seed(cfg.seed)
    initial = build_model(cfg).double().state_dict()
    for key, weight in a["model"].items():
        if not weight.is_floating_point():
            assert torch.equal(weight, b["model"][key]), key
            continue
        moved = (weight - initial[key]).abs().max()
        assert (weight - b["model"][key]).abs().max() <= 1e-9 * moved + 1e-15, key


def _worker_of_rank(launcher: subprocess.Popen, rank: int) -> int | None:
    """The pid of the launcher's worker process with RANK=rank (read from /proc), None if none yet."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # the process ended while being read
        if parent == launcher.pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def _steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return path.read_text().count('"kind": "step"') if path.exists() else 0


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc (Linux)")
def test_torchrun_restarts_after_a_sigkill_and_ends_bitwise_equal(two_process_run, tmp_path):
    """``torchrun --max-restarts 2 ... pretrain --resume auto``: the same command starts the run and, after
    rank 0 is killed with SIGKILL mid-epoch, restarts the group, which resumes from the last checkpoint
    (one every step here) and ends bitwise equal to the uninterrupted two-process run."""
    run_dir = tmp_path / "restarted"
    command = torchrun_command(
        "--max-restarts",
        "2",
        "--monitor-interval",
        "0.1",
        "-m",
        "vi_simsiam",
        "pretrain",
        *DDP_COMMON,
        "--log-every",
        "1",
        "--checkpoint-every",
        "1",
        "--resume",
        "auto",
        "--output-dir",
        str(run_dir),
    )
    launcher = subprocess.Popen(
        command, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 240
        killed_after = DDP_STEPS // 2  # steps 4-5 of 9: inside the second epoch
        while _steps_logged(run_dir) < killed_after:
            assert launcher.poll() is None, f"run ended before it could be killed: {launcher.communicate()}"
            assert time.time() < deadline, "run too slow to reach the kill point"
            time.sleep(0.01)
        worker = _worker_of_rank(launcher, 0)
        assert worker is not None, "rank 0's process not found"
        os.kill(worker, signal.SIGKILL)
        out, err = launcher.communicate(timeout=240)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 0, err[-4000:]
    assert "nothing to resume" in out and "starting a new run there" in out  # the first start
    assert "resuming" in out, out  # the restart
    resumed_from = int(out.split("resuming", 1)[1].split("step ", 1)[1].split(";", 1)[0])
    assert killed_after - 1 <= resumed_from < DDP_STEPS, out  # it resumed mid-run, not from the start or the end
    restarted, uninterrupted = final_state(run_dir), final_state(two_process_run)
    assert restarted["step"] == uninterrupted["step"] == DDP_STEPS
    assert_bitwise_equal(restarted["model"], uninterrupted["model"], "model")
    for a, b in zip(restarted["optimizer"]["state"].values(), uninterrupted["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


def test_a_diverging_run_stops_without_saving_the_broken_state(tmp_path, capsys, restore_torch_globals):
    """An absurd learning rate: the loss turns NaN/inf; the run stops with one line naming the epoch and
    step, exit status 1, and the checkpoint on disk is the last good one (here: step 0), loadable."""
    from vi_simsiam import checkpoint

    run_dir = tmp_path / "run"
    code = cli.main(["pretrain", *TINY, "--epochs", "3", "--lr", "1e30", "--warmup-epochs", "0",
                     "--log-every", "1000", "--no-evaluate", "--output-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("vi-simsiam: error: the loss became NaN or infinite at epoch 1, step "), err
    assert "Traceback" not in err
    state = checkpoint.load(run_dir / CHECKPOINT_NAME)
    assert state["step"] == 0 and state["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


# ---------------------------------------------------------------------------- checkpoints that survive damage
def test_a_damaged_newest_checkpoint_resumes_from_the_one_before_bitwise(uninterrupted, tmp_path):
    """Two checkpoints kept (the default), each with a size/checksum record; the newest truncated (a bad
    copy): --resume auto says it skips it, resumes from checkpoint.1.pt (one epoch earlier) and ends
    bitwise equal to the uninterrupted run."""
    run_dir = tmp_path / "run"
    done = run_cli(["pretrain", *EXACT, "--output-dir", str(run_dir)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in run_dir.glob("checkpoint*"))
    assert names == ["checkpoint.1.pt", "checkpoint.1.pt.sha256", "checkpoint.pt", "checkpoint.pt.sha256"]
    older = torch.load(run_dir / "checkpoint.1.pt", map_location="cpu", weights_only=False)
    assert older["step"] == 3 * STEPS_PER_EPOCH and older["epoch"] == 3
    newest = run_dir / CHECKPOINT_NAME
    newest.write_bytes(newest.read_bytes()[:4096])
    done = run_cli(["pretrain", *EXACT, "--output-dir", str(run_dir), "--resume", "auto"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"skipping {newest}: size or checksum differs from its record" in done.stderr
    assert f"at epoch 3, step {3 * STEPS_PER_EPOCH}" in done.stdout
    assert_bitwise_equal(final_state(run_dir)["model"], uninterrupted["model"], "model")


def test_no_checkpoint_that_verifies_is_a_clear_error(tmp_path, capsys, restore_torch_globals):
    run_dir = tmp_path / "run"
    assert cli.main(["pretrain", *TINY, "--epochs", "1", "--no-evaluate", "--output-dir", str(run_dir)]) == 0
    for path in run_dir.glob("checkpoint*.pt"):
        path.write_bytes(b"\0" * 100)
    capsys.readouterr()
    assert cli.main(["pretrain", "--output-dir", str(run_dir), "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint in" in err and "verifies" in err and "Traceback" not in err


def test_checkpoints_every_n_steps_and_how_many_are_kept(tmp_path, restore_torch_globals):
    run_dir = tmp_path / "run"
    args = [*TINY, "--epochs", "1", "--batch-size", "256", "--no-evaluate", "--checkpoint-every", "2",
            "--keep-checkpoints", "3", "--output-dir", str(run_dir)]
    assert cli.main(["pretrain", *args]) == 0  # 1347 // 256 = 5 steps: saves at 2, 4 and the epoch's end
    steps = [torch.load(run_dir / name, map_location="cpu", weights_only=False)["step"]
             for name in ("checkpoint.pt", "checkpoint.1.pt", "checkpoint.2.pt")]
    assert steps == [5, 4, 2]
    assert not (run_dir / "checkpoint.3.pt").exists()
