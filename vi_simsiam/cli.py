"""``vi-simsiam`` (and ``python -m vi_simsiam``): pretrain | knn | linear | uncertainty | score.

    vi-simsiam pretrain                          # the main job: digits, VI-SimSiam, then evaluation
    vi-simsiam pretrain --distribution none      # plain SimSiam through the same code
    torchrun --nproc_per_node 8 -m vi_simsiam pretrain --preset imagefolder --data-dir /data/imagenet
    vi-simsiam pretrain --resume auto --output-dir runs/X   # continue a killed run

Every config field (``vi_simsiam.config.Config``) is an option; unset options take the preset's value.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .config import FIELD_RULES, PRESETS, Config, option_name
from .constraints import Integer, Real
from .errors import ConfigError, TrainingDiverged

HELP = {
    "preset": f"recipe to start from: {', '.join(PRESETS)} (default digits)",
    "data_dir": "data root (cifar: the folder holding cifar-10-batches-py/; imagefolder, imagenet100: holding "
    "train/ and val/; imagenette, imagewoof: the extracted folder or the one holding it)",
    "download": "download CIFAR, Imagenette or Imagewoof into --data-dir if it is missing",
    "class_list": "image folders: only these classes: a bundled list (imagenet100, imagenette, imagewoof) or a "
    "text file, one class folder per line",
    "bad_images": "unreadable image files in an image folder: skip (default; each named in a warning) | fail",
    "distribution": "power_spherical (VI-SimSiam, default) | vmf | none (plain SimSiam)",
    "kl_weight": "weight of KL(q || uniform) added to the loss",
    "kappa_input": "what the kappa head reads: projector (default) | backbone",
    "kappa_param": "kappa from the head's output u: scaled_softplus (kappa_min + (d-1) softplus(u), default) | "
    "softplus (kappa_min + softplus(u)) | scaled_exp (kappa_min + (d-1) exp(u))",
    "kappa_lr_scale": "multiplies the kappa head's learning-rate scale (1/(d-1) for the scaled parametrizations)",
    "batch_size": "global batch size over all processes",
    "lr": "base learning rate, scaled by batch_size / 256",
    "fix_pred_lr": "keep the predictor's lr fixed after warmup (SimSiam's option)",
    "amp": "mixed precision on CUDA: auto (bf16 where supported) | none | bf16 | fp16",
    "workers": "data loader worker processes",
    "threads": "torch CPU threads (default: torch's choice)",
    "deterministic": "deterministic algorithms (with a fixed --threads, CPU runs are bitwise reproducible)",
    "output_dir": "run directory (default runs/<preset>-<distribution>-<time>); must be new unless --resume",
    "evaluate": "evaluate (kNN, kappa) on the held-out split after pretraining",
    "knn_k": "neighbours for the kNN evaluation",
    "checkpoint_every": "also write a checkpoint every N steps inside an epoch (0: at epoch ends and on SIGTERM/SIGINT)",
    "keep_checkpoints": "checkpoints kept (checkpoint.pt newest, then checkpoint.1.pt, ...); --resume takes the newest that verifies",
}


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, type) else str(f.type)
        if f.name == "preset":
            parser.add_argument(flag, default="digits", help=HELP[f.name])
        elif kind in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=HELP.get(f.name))
        elif kind in (int, "int", "int | None"):
            parser.add_argument(flag, type=int, default=None, help=HELP.get(f.name))
        elif kind in (float, "float"):
            parser.add_argument(flag, type=float, default=None, help=HELP.get(f.name))
        else:
            parser.add_argument(flag, default=None, help=HELP.get(f.name))


# The options of knn / linear / uncertainty and what each may be (the run's own FIELD_RULES where the
# option is one of its fields; None: the run's value or the command's default).
EVALUATION_RULES = {
    "device": FIELD_RULES["device"],
    "threads": FIELD_RULES["threads"],
    "k": Integer(low=1, optional=True),
    "temperature": Real(low=0.0, low_open=True, optional=True),
    "linear_epochs": Integer(low=1),
    "linear_lr": Real(low=0.0, low_open=True, optional=True),
}


def check_evaluation_options(args: argparse.Namespace) -> None:
    for name, rule in EVALUATION_RULES.items():
        if hasattr(args, name) and not rule.allows(getattr(args, name)):
            raise ConfigError(f"{option_name(name)} {getattr(args, name)!r}: must be {rule.describe()}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vi-simsiam", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    pretrain = commands.add_parser("pretrain", help="self-supervised pretraining (then kNN and kappa evaluation)")
    _add_config_options(pretrain)
    pretrain.add_argument(
        "--resume",
        default=None,
        metavar="auto|PATH",
        help="continue a run: auto (the run in --output-dir, else the newest of this preset) "
        "or a checkpoint / run directory",
    )

    for name, helptext in (
        ("knn", "weighted cosine kNN on frozen backbone features of a run"),
        ("linear", "linear probe on frozen backbone features of a run"),
        ("uncertainty", "kappa against accuracy, kappa under corruption, figures and report for a run"),
    ):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("run", help="a pretraining run directory")
        sub.add_argument("--device", default="auto", help="auto | cpu | cuda")
        sub.add_argument("--threads", type=int, default=None)
        if name in ("knn", "uncertainty"):
            sub.add_argument("--k", type=int, default=None, help="neighbours (default: the run's knn_k)")
            sub.add_argument("--temperature", type=float, default=None)
        if name in ("linear", "uncertainty"):
            sub.add_argument("--linear-epochs", type=int, default=100)
            sub.add_argument("--linear-lr", type=float, default=None)

    score = commands.add_parser("score", help="rank image files or folders by a run's kappa (low = uncertain)")
    score.add_argument("run", help="a pretraining run directory")
    score.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    score.add_argument("--output", default="scores.csv", help="CSV sorted by kappa (default scores.csv)")
    score.add_argument("--grid", default=None, help="lowest/highest-kappa image grid (default <output>_grid.png)")
    score.add_argument("--batch-size", type=int, default=None, help="images per batch (default: eval_batch_size)")
    score.add_argument("--device", default="auto", help="auto | cpu | cuda")
    score.add_argument("--threads", type=int, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "pretrain":
            from . import config as config_lib
            from .pretrain import run

            overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if f.name != "preset"}
            if args.resume:
                # The run's saved config wins (``config.merge_for_resume`` checks the overrides against it);
                # this one only says where to look: --output-dir, or the newest run of preset + distribution.
                if args.preset not in PRESETS:
                    raise ConfigError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
                cfg = config_lib.Config(
                    preset=args.preset,
                    output_dir=args.output_dir,
                    distribution=args.distribution or "power_spherical",
                    device=args.device or "auto",
                )
            else:
                cfg = config_lib.resolve(args.preset, **overrides)
            run(cfg, resume=args.resume, overrides=overrides)
        elif args.command == "score":
            from . import scoring

            check_evaluation_options(args)
            scoring.main(args)
        else:
            from . import evaluation

            check_evaluation_options(args)
            evaluation.main(args)
    except ConfigError as error:
        print(f"vi-simsiam: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:  # one line, no traceback; any other error keeps its traceback
        print(f"vi-simsiam: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
