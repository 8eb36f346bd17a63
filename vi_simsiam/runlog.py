"""Run logs: metrics.jsonl (every record), metrics.csv (one row per epoch), TensorBoard (tb/).

Only the main process writes. A resumed run appends; TensorBoard purges events logged after the
resume point, so curves do not double back.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool = True, purge_step: int | None = None):
        self.enabled, self.run_dir = enabled, Path(run_dir)
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge_step)
        except ImportError:  # tensorboard not installed: JSONL / CSV still hold everything
            self.writer = None

    def log(self, kind: str, step: int, **values) -> None:
        """One record of ``kind`` ("step", "epoch", "eval", ...) at global ``step``."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record, default=float) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)
        if kind == "epoch":
            path = self.run_dir / "metrics.csv"
            new = not path.exists()
            with open(path, "a", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=["step", *values])
                if new:
                    writer.writeheader()
                writer.writerow({"step": step, **values})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
