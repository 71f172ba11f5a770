"""The trainer's command line: one parser, parsed once.

`--config FILE` (YAML or JSON: a mapping of option names, dashes or underscores) is turned into command-line
tokens placed before the real command line and parsed by the same parser, so a file value goes through exactly
the conversion and checks of the option it names, and the command line wins (argparse keeps the last value).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from facap_dataset.captions import CAPTION_JOIN_RULES
from facap_io.errors import first_line
from facap_io.lists import comma_list, int_list
from facap_retrieval.ranking import DEFAULT_K_VALUES

from .data import CAPTION_AUGMENTATIONS

TRACKERS = ("none", "tensorboard", "trackio", "wandb")
MIXED_PRECISION = ("no", "fp16", "bf16")
# Options taking several values as separate tokens (`--dataset a b`); every other list is a comma list.
MULTI_TOKEN_OPTIONS = ("dataset",)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (`prog: error: ...`) without the usage block above it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(text: str, *, minimum: float, inclusive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    bound_ok = value >= minimum if inclusive else value > minimum
    if not math.isfinite(value) or not bound_ok:
        raise argparse.ArgumentTypeError(f"expected a finite number {'>=' if inclusive else '>'} {minimum:g}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse `type=` for learning rates: finite and > 0 (a negative rate would ascend the loss)."""
    return _number(text, minimum=0, inclusive=False)


def non_negative_float(text: str) -> float:
    """argparse `type=` for weight decay and the clipping norm: finite and >= 0 (NaN would switch clipping off)."""
    return _number(text, minimum=0, inclusive=True)


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def build_parser(*, exit_on_error: bool = True) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="train_accelerate.py",
        description="Train FashionBLIP-2 (composed image retrieval) with Accelerate.",
        epilog="Every option may also come from --config FILE (YAML or JSON, keys as option names with dashes or "
        "underscores, true/false for --x/--no-x switches); options given on the command line win.",
        exit_on_error=exit_on_error,
    )
    parser.add_argument("--config", type=Path, help="YAML or JSON file supplying any of the options below")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", nargs="+", help="built dataset folder(s) or Hub id(s); several are mixed")
    data.add_argument("--configs", type=comma_list, help="triplet configs to train on, e.g. dress,shirt,toptee")
    data.add_argument("--eval-dataset", help="dataset evaluated during training (default: the first --dataset)")
    data.add_argument("--eval-configs", type=comma_list, help="configs evaluated (default: --configs)")
    data.add_argument("--eval-split", default="validation")
    data.add_argument("--caption-augmentation", choices=CAPTION_AUGMENTATIONS, default="both-orders",
                      help="training texts of two-caption triplets: the pair joined in a random order "
                      "(both-orders, the default), or also either caption alone (all); none = --caption-join")
    data.add_argument("--caption-join", choices=[r for r in CAPTION_JOIN_RULES if r != "both-orders"],
                      default="fashioniq", help="deterministic join used for evaluation (and for training "
                      "with --caption-augmentation none)")
    data.add_argument("--targetpad", type=float, metavar="RATIO",
                      help="pad training images to a square when their aspect ratio exceeds RATIO (CLIP4Cir: 1.25)")
    data.add_argument("--hard-negatives", action=argparse.BooleanOptionalAction, default=True,
                      help="when the training data has a `negative_image` column (e.g. `build synthetic "
                      "--hard-negatives`), add those images to the loss's candidates (default: yes)")
    data.add_argument("--num-workers", type=int, default=1, help="DataLoader worker processes (default: 1)")
    data.add_argument("--cache-images", action=argparse.BooleanOptionalAction, default=False,
                      help="decode and process every training image once at start-up and keep the pixels in memory "
                      "(triplets x images x 3 x S x S x 4 bytes: 2.2 GB for the demo's 15,000 triplets with hard "
                      "negatives; for small sets and slow CPUs)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", help="preset name (tiny, demo, blip2-vit-g), a saved FashionBLIP-2 folder, or "
                       "a BLIP-2 retrieval checkpoint (folder or Hub id, converted with from_blip2)")
    model.add_argument("--init-from", type=Path, help="fine-tune a trained model: a saved model folder or a "
                       "training output folder (its best/, else final/)")
    model.add_argument("--model-overrides", type=json_object, default={}, metavar="JSON",
                       help='config fields to set on the model, e.g. \'{"reference_negatives": true}\' (presets, '
                       "saved folders and BLIP-2 conversions alike)")
    model.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--output-dir", type=Path)
    optim.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                       help="replace the run already in --output-dir (only the files a run writes)")
    optim.add_argument("--max-steps", type=int, help="optimizer steps (exclusive with --num-epochs)")
    optim.add_argument("--num-epochs", type=float, help="passes over the training data (default: 1)")
    optim.add_argument("--batch-size", type=int, default=64, help="per device (default: 64)")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=1)
    optim.add_argument("--learning-rate", type=positive_float, default=2e-5,
                       help="Q-Former and the rest (default: 2e-5)")
    optim.add_argument("--adapter-learning-rate", type=positive_float, default=1e-4,
                       help="vision adapters and matching mixers (default: 1e-4)")
    optim.add_argument("--weight-decay", type=non_negative_float, default=0.05)
    optim.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default: --warmup-ratio)")
    optim.add_argument("--warmup-ratio", type=float, default=0.05, help="warm-up as a share of all steps")
    optim.add_argument("--max-grad-norm", type=non_negative_float, default=1.0, help="clip gradients (0 = off)")
    optim.add_argument("--mixed-precision", choices=MIXED_PRECISION,
                       help="default: what `accelerate config`/`accelerate launch` says")
    optim.add_argument("--seed", type=int, default=42)

    run = parser.add_argument_group("logging, evaluation, checkpoints, publishing")
    run.add_argument("--logging-steps", type=int, default=10)
    run.add_argument("--eval-steps", type=int, default=0, help="evaluate every N steps (0 = at the end only)")
    run.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                     help="evaluate during training (--no-eval: never, and no best/)")
    run.add_argument("--eval-batch-size", type=int, default=64)
    run.add_argument("--eval-k-values", type=int_list, default=list(DEFAULT_K_VALUES),
                     help="recall cut-offs (default: 1,5,10,50); a cut-off above a gallery's size is dropped for "
                     "that gallery (noted in the log and the results). The best model is chosen by the mean of "
                     "R@10 and R@50 (Fashion IQ), or of all cut-offs when those two are not both computed")
    run.add_argument("--save-steps", type=int, default=500, help="checkpoint every N steps (and at the end)")
    run.add_argument("--save-total-limit", type=int, help="keep only the newest N checkpoints")
    run.add_argument("--resume-from-checkpoint", metavar="latest|PATH")
    run.add_argument("--report-to", choices=TRACKERS, default="none")
    run.add_argument("--project-name", default="fashionblip2", help="tracker project name")
    run.add_argument("--push-to-hub", metavar="ORG/NAME", help="at the end, upload best/ (else final/) with its "
                     "model card to this Hub model repo (token: HF_TOKEN or `hf auth login`)")
    run.add_argument("--hub-private", action=argparse.BooleanOptionalAction, default=None,
                     help="create the --push-to-hub repo private (default: the Hub's default)")
    return parser


def config_tokens(path: Path, option_names: Sequence[str]) -> list[str]:
    """The command-line tokens a `--config` file stands for; raises ValueError naming a bad key or value."""
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(first_line(error)) from None
    if not isinstance(values, dict):
        raise ValueError("expected a mapping of option names to values")
    tokens: list[str] = []
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest not in option_names:
            raise ValueError(f"unknown option {key!r}")
        flag = "--" + dest.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):  # every switch is an --x/--no-x pair
            tokens.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, dict):
            tokens += [flag, json.dumps(value)]
        elif isinstance(value, list) and dest in MULTI_TOKEN_OPTIONS:
            tokens += [flag, *(str(item) for item in value)]
        elif isinstance(value, list):
            tokens += [flag, ",".join(str(item) for item in value)]
        else:
            tokens += [flag, str(value)]
    return tokens


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse once: `--config` tokens first, then the command line (which wins); then the combination is checked."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    tokens: list[str] = []
    if pre.config is not None:
        names = [name for name in vars(pre) if name != "config"]
        try:
            tokens = config_tokens(pre.config, names)
            _, unknown = build_parser(exit_on_error=False).parse_known_args(tokens)
        except (ValueError, argparse.ArgumentError) as error:
            parser.error(f"--config {pre.config}: {error}")
        if unknown:
            parser.error(f"--config {pre.config}: cannot read {' '.join(unknown)}")
    args = parser.parse_args(tokens + argv)
    problem = check_combination(args)
    if problem:
        parser.error(problem)
    return args


def check_combination(args: argparse.Namespace) -> str | None:
    """The first problem with the option combination, or None."""
    if not args.dataset:
        return "--dataset is required"
    if not args.configs:
        return "--configs is required"
    if args.output_dir is None:
        return "--output-dir is required"
    if (args.model is None) == (args.init_from is None):
        return "give exactly one of --model and --init-from"
    if args.max_steps is not None and args.num_epochs is not None:
        return "give --max-steps or --num-epochs, not both"
    for name in ("batch_size", "gradient_accumulation_steps", "eval_batch_size", "logging_steps", "save_steps"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
    for name in ("max_steps", "save_total_limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
    if args.num_epochs is not None and not (math.isfinite(args.num_epochs) and args.num_epochs > 0):
        return f"--num-epochs must be a finite number > 0, got {args.num_epochs}"
    if args.num_workers < 0 or args.eval_steps < 0:
        return "--num-workers and --eval-steps must be >= 0"
    if args.warmup_steps is not None and args.warmup_steps < 0:
        return f"--warmup-steps must be >= 0, got {args.warmup_steps}"
    if args.targetpad is not None and not (math.isfinite(args.targetpad) and args.targetpad >= 1):
        return f"--targetpad must be >= 1 (an aspect ratio), got {args.targetpad}"
    if not 0 <= args.warmup_ratio < 1:
        return f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}"
    if args.hub_private is not None and args.push_to_hub is None:
        return "--hub-private needs --push-to-hub"
    return None
