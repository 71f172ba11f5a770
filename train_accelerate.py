"""Train FashionBLIP-2 for composed image retrieval with Accelerate.

    accelerate launch train_accelerate.py --dataset DIR --configs dress,shirt,toptee --model demo \\
        --output-dir runs/demo --max-steps 1000 --batch-size 64

One process or many (DDP, FSDP, DeepSpeed through `accelerate config`); `--batch-size` is per device.
The run folder receives `args.json`, `metrics.jsonl`, `checkpoints/checkpoint-<step>/` (resumable with
`--resume-from-checkpoint latest`), `best/` (best validation average, when evaluating) and `final/`, both
`save_pretrained` folders loadable with `AutoModel.from_pretrained(..., trust_remote_code=True)`.
See docs/training.md.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from facap_dataset.captions import CAPTION_JOIN_RULES
from facap_dataset.errors import DataError
from facap_train.checkpoint import (
    CHECKPOINTS,
    CheckpointError,
    TrainerState,
    resolve_resume,
    save_checkpoint,
    save_pretrained_atomic,
)
from facap_train.data import (
    CAPTION_AUGMENTATIONS,
    TripletDataset,
    build_dataloader,
    load_training_triplets,
    preprocess_pixels,
)

TRACKERS = ("none", "tensorboard", "trackio", "wandb")
MIXED_PRECISION = ("no", "fp16", "bf16")
# Files and folders a run writes into its output dir; --overwrite removes exactly these.
RUN_ARTIFACTS = ("args.json", "metrics.jsonl", CHECKPOINTS, "best", "final", "logs")
# Parameter-name fragments of the parts trained with --adapter-learning-rate: the vision adapters and the
# matching head (TokenMix/ChannelMix). Everything else trainable (Q-Former, query tokens, temperature) uses
# --learning-rate.
ADAPTER_PARAMETER_KEYS = ("adapter", "token_mix", "channel_mix")
# Parameters exempt from weight decay, as in BERT/BLIP-2 recipes: biases, norms, learned tokens, temperature.
NO_DECAY_KEYS = ("bias", "layernorm", "layer_norm", "norm.weight", "query_tokens", "temperature", "logit_scale")


class TrainingError(ValueError):
    """A bad option combination or a run that cannot go on; the message names the culprit."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; raised before the offending step touches the weights."""


# ----------------------------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_accelerate.py",
        description="Train FashionBLIP-2 (composed image retrieval) with Accelerate.",
        epilog="Every option may also come from --config FILE (YAML or JSON, keys as option names with "
        "dashes or underscores); options given on the command line win.",
    )
    parser.add_argument("--config", type=Path, help="YAML or JSON file supplying any of the options below")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", nargs="+", help="built dataset folder(s) or Hub id(s); several are mixed")
    data.add_argument("--configs", type=_comma_list, help="triplet configs to train on, e.g. dress,shirt,toptee")
    data.add_argument("--eval-dataset", help="dataset evaluated during training (default: the first --dataset)")
    data.add_argument("--eval-configs", type=_comma_list, help="configs evaluated (default: --configs)")
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
    data.add_argument("--cache-images", action="store_true",
                      help="decode and process every training image once at start-up and keep the pixels in memory "
                      "(triplets x images x 3 x S x S x 4 bytes: 2.2 GB for the demo's 15,000 triplets with hard "
                      "negatives; for small sets and slow CPUs)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", help="preset name (tiny, demo, blip2-vit-g), a saved FashionBLIP-2 folder, or "
                       "a BLIP-2 retrieval checkpoint (folder or Hub id, converted with from_blip2)")
    model.add_argument("--init-from", type=Path, help="fine-tune a trained model: a saved model folder or a "
                       "training output folder (its best/, else final/)")
    model.add_argument("--model-overrides", type=_json_object, default={}, metavar="JSON",
                       help='config fields to set on the model, e.g. \'{"reference_negatives": true}\' (presets, '
                       "saved folders and BLIP-2 conversions alike)")
    model.add_argument("--gradient-checkpointing", action="store_true")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--output-dir", type=Path)
    optim.add_argument("--overwrite", action="store_true", help="replace the run already in --output-dir")
    optim.add_argument("--max-steps", type=int, help="optimizer steps (exclusive with --num-epochs)")
    optim.add_argument("--num-epochs", type=float, help="passes over the training data (default: 1)")
    optim.add_argument("--batch-size", type=int, default=64, help="per device (default: 64)")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=1)
    optim.add_argument("--learning-rate", type=float, default=2e-5, help="Q-Former and the rest (default: 2e-5)")
    optim.add_argument("--adapter-learning-rate", type=float, default=1e-4,
                       help="vision adapters and matching mixers (default: 1e-4)")
    optim.add_argument("--weight-decay", type=float, default=0.05)
    optim.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default: --warmup-ratio)")
    optim.add_argument("--warmup-ratio", type=float, default=0.05, help="warm-up as a share of all steps")
    optim.add_argument("--max-grad-norm", type=float, default=1.0, help="clip gradients (0 = off)")
    optim.add_argument("--mixed-precision", choices=MIXED_PRECISION,
                       help="default: what `accelerate config`/`accelerate launch` says")
    optim.add_argument("--seed", type=int, default=42)

    run = parser.add_argument_group("logging, evaluation, checkpoints")
    run.add_argument("--logging-steps", type=int, default=10)
    run.add_argument("--eval-steps", type=int, default=0, help="evaluate every N steps (0 = at the end only)")
    run.add_argument("--no-eval", action="store_true", help="never evaluate (no best/)")
    run.add_argument("--eval-batch-size", type=int, default=64)
    run.add_argument("--eval-k-values", type=_int_list, default=[1, 5, 10, 50],
                     help="recall cut-offs (default: 1,5,10,50); the best model is chosen by the mean of R@10 "
                     "and R@50 (Fashion IQ), or of all cut-offs when those two are not both computed")
    run.add_argument("--save-steps", type=int, default=500, help="checkpoint every N steps (and at the end)")
    run.add_argument("--save-total-limit", type=int, help="keep only the newest N checkpoints")
    run.add_argument("--resume-from-checkpoint", metavar="latest|PATH")
    run.add_argument("--report-to", choices=TRACKERS, default="none")
    run.add_argument("--project-name", default="fashionblip2", help="tracker project name")
    return parser


def _comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(item) for item in _comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"recall cut-offs must be >= 1, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse once: config-file values become defaults, the command line overrides them, then validate."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config is not None:
        parser.set_defaults(**read_config_file(pre.config, parser))
    args = parser.parse_args(argv)
    problem = validate_args(args)
    if problem:
        parser.error(problem)
    return args


def read_config_file(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Options from a YAML/JSON mapping, converted with the parser's own types; unknown keys are errors."""
    import yaml  # YAML is a superset of JSON: one reader serves both

    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        parser.error(f"--config {path}: {error}")
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a mapping of option names to values")
    actions = {action.dest: action for action in parser._actions if action.dest not in ("help", "config")}
    defaults = {}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            parser.error(f"--config {path}: unknown option {key!r}")
        defaults[dest] = _convert_config_value(actions[dest], value, path, parser)
    return defaults


def _convert_config_value(action: argparse.Action, value: Any, path: Path, parser: argparse.ArgumentParser):
    if value is None:
        return None
    if action.nargs == "+":
        return [str(item) for item in (value if isinstance(value, list) else [value])]
    if action.type in (_comma_list, _int_list) and isinstance(value, list):
        value = ",".join(str(item) for item in value)
    if action.type is _json_object and isinstance(value, dict):
        return value
    converter = action.type or (lambda raw: raw)
    try:
        converted = value if isinstance(value, bool) else converter(str(value))
    except (ValueError, argparse.ArgumentTypeError) as error:
        parser.error(f"--config {path}: option {action.dest!r}: {error}")
    if action.choices is not None and converted not in action.choices:
        parser.error(f"--config {path}: option {action.dest!r}: {converted!r} is not one of {action.choices}")
    return converted


def validate_args(args: argparse.Namespace) -> str | None:
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
    if args.num_epochs is not None and args.num_epochs <= 0:
        return f"--num-epochs must be > 0, got {args.num_epochs}"
    if args.num_workers < 0 or args.eval_steps < 0:
        return "--num-workers and --eval-steps must be >= 0"
    if args.targetpad is not None and args.targetpad < 1:
        return f"--targetpad must be >= 1 (an aspect ratio), got {args.targetpad}"
    if not 0 <= args.warmup_ratio < 1:
        return f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}"
    return None


# ------------------------------------------------------------------------------------------- run set-up
@dataclass(frozen=True)
class RunPlan:
    """Values derived from the arguments and the data; the arguments themselves are never changed."""

    num_processes: int
    train_size: int
    batches_per_epoch: int  # per process
    global_batch_size: int  # examples per optimizer step, all processes and accumulation included
    total_steps: int
    warmup_steps: int


def build_accelerator(args: argparse.Namespace):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    if args.report_to != "none" and importlib.util.find_spec(args.report_to) is None:
        # Accelerate would only warn and train without the tracker.
        raise TrainingError(f"--report-to {args.report_to}: the {args.report_to} package is not installed")
    return Accelerator(
        cpu=_launched_on_cpu(),
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(args.output_dir), logging_dir=str(args.output_dir / "logs")),
        # The schedule is written in optimizer steps; we step it once per optimizer step ourselves.
        step_scheduler_with_optimizer=False,
    )


def _launched_on_cpu() -> bool:
    """Several processes started by a launcher on a machine without an accelerator.

    Accelerate forms a gloo process group for them only when told `cpu=True`; otherwise each process would
    silently train alone on the same batches (and `accelerate launch --cpu` starts a single process).
    """
    from accelerate.utils import is_mps_available, is_npu_available, is_xpu_available

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return several and not (torch.cuda.is_available() or is_xpu_available() or is_npu_available() or is_mps_available())


def cpu_thread_hint(accelerator) -> str | None:
    """A warning when one CPU process leaves cores idle: `accelerate launch` sets OMP_NUM_THREADS=1 unless given
    --num_cpu_threads_per_process (or --cpu), which roughly halves the demo's speed on two cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = torch.get_num_threads()
    if accelerator.device.type != "cpu" or accelerator.num_processes > 1 or threads >= cores:
        return None
    omp = os.environ.get("OMP_NUM_THREADS")
    return (f"warning: torch uses {threads} of {cores} CPU cores (OMP_NUM_THREADS={omp}); with accelerate launch "
            f"pass --num_cpu_threads_per_process {cores} to use them all")


def prepare_output_dir(args: argparse.Namespace, accelerator) -> Path:
    """Refuse an output dir holding another run unless --overwrite (then remove that run's artifacts)."""
    output_dir = args.output_dir
    existing = sorted(p.name for p in output_dir.iterdir()) if output_dir.is_dir() else []
    if output_dir.exists() and not output_dir.is_dir():
        raise TrainingError(f"--output-dir {output_dir} exists and is not a folder")
    resuming_here = args.resume_from_checkpoint is not None and (
        args.resume_from_checkpoint == "latest" or output_dir.resolve() in Path(args.resume_from_checkpoint).resolve().parents
    )
    if existing and not resuming_here and not args.overwrite:
        raise TrainingError(
            f"--output-dir {output_dir} already holds a run ({', '.join(existing[:5])}); pass --overwrite to "
            "replace it or --resume-from-checkpoint latest to continue it"
        )
    accelerator.wait_for_everyone()  # every process has checked before anything is written
    if accelerator.is_main_process:
        if args.overwrite and not resuming_here:
            for name in RUN_ARTIFACTS:
                target = output_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    return output_dir


def plan_run(args: argparse.Namespace, train_size: int, num_processes: int) -> RunPlan:
    per_step = args.batch_size * num_processes
    if per_step > train_size:
        raise DataError(
            f"--batch-size {args.batch_size} x {num_processes} process(es) = {per_step} exceeds the "
            f"{train_size} training triplets"
        )
    batches_per_epoch = train_size // per_step
    if args.max_steps is not None:
        total_steps = args.max_steps
    else:
        epochs = args.num_epochs if args.num_epochs is not None else 1.0
        total_steps = max(1, math.ceil(epochs * batches_per_epoch / args.gradient_accumulation_steps))
    warmup = args.warmup_steps if args.warmup_steps is not None else int(args.warmup_ratio * total_steps)
    return RunPlan(
        num_processes=num_processes,
        train_size=train_size,
        batches_per_epoch=batches_per_epoch,
        global_batch_size=per_step * args.gradient_accumulation_steps,
        total_steps=total_steps,
        warmup_steps=min(warmup, total_steps),
    )


def write_run_config(args: argparse.Namespace, plan: RunPlan, sources: Sequence[str], accelerator, output_dir: Path) -> dict:
    """`args.json`: the resolved options, the derived plan and the data actually used; also sent to trackers."""
    import accelerate
    import transformers

    resolved = {
        "args": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "plan": vars(plan) | {"mixed_precision": accelerator.mixed_precision,
                              "distributed_type": str(accelerator.distributed_type)},
        "train_sources": list(sources),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "accelerate": accelerate.__version__},
    }
    if accelerator.is_main_process:
        _write_text_atomic(output_dir / "args.json", json.dumps(resolved, indent=2) + "\n")
    return resolved


def _write_text_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".tmp-{path.name}")
    temporary.write_text(text)
    os.replace(temporary, path)


# ------------------------------------------------------------------------------------------------- model
def load_model_and_processor(args: argparse.Namespace, texts: Sequence[str]):
    """--model PRESET | saved FashionBLIP-2 folder | BLIP-2 checkpoint, or --init-from a trained model/run."""
    from modeling_fashionblip2 import PRESETS

    overrides = args.model_overrides
    if args.init_from is not None:
        model, processor = _load_saved(resolve_init_from(args.init_from), overrides)
    elif args.model in PRESETS:
        model, processor = _from_preset(args.model, texts, overrides)
    elif _is_fashionblip2_folder(Path(args.model)):
        model, processor = _load_saved(Path(args.model), overrides)
    else:
        model, processor = _from_blip2(args.model, overrides)
    if args.targetpad is not None:
        # A processor attribute, saved with it: evaluation and the app pad exactly as training did.
        processor.target_pad_ratio = args.targetpad
    return model, processor


def _from_preset(name: str, texts: Sequence[str], overrides: dict[str, Any]):
    """A random-init model; its tokenizer is built offline from the training texts' words."""
    from modeling_fashionblip2 import FashionBlip2Config, FashionBlip2Model, FashionBlip2Processor

    config = _model_config(FashionBlip2Config.from_preset, name, overrides)
    processor = FashionBlip2Processor.from_texts(
        texts, image_size=config.vision_config.image_size, max_text_length=config.max_text_length
    )
    if len(processor.tokenizer) > config.qformer_config.vocab_size:
        qformer = {**overrides.get("qformer_config", {}), "vocab_size": len(processor.tokenizer)}
        config = _model_config(FashionBlip2Config.from_preset, name, {**overrides, "qformer_config": qformer})
    return FashionBlip2Model(config), processor


def _model_config(factory, name: str, overrides: dict[str, Any]):
    try:
        config = factory(name, **copy.deepcopy(overrides))
    except (ValueError, TypeError) as error:
        raise TrainingError(f"--model-overrides {json.dumps(overrides)}: {error}") from error
    unknown = sorted(set(overrides) - set(type(config)().to_dict()))  # a typo would become a stray attribute
    if unknown:
        raise TrainingError(f"--model-overrides: {', '.join(unknown)} is not a FashionBLIP-2 config field")
    return config


def _is_fashionblip2_folder(path: Path) -> bool:
    config_file = path / "config.json"
    return config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == "fashionblip2"


def _from_blip2(path_or_id: str, overrides: dict[str, Any]):
    """Convert a BLIP-2 retrieval checkpoint; its own tokenizer and image processor become the processor."""
    from modeling_fashionblip2 import PRESETS, FashionBlip2Model, FashionBlip2Processor
    from modeling_fashionblip2 import ConversionError

    try:
        model = FashionBlip2Model.from_blip2(path_or_id, **copy.deepcopy(overrides))
        processor = FashionBlip2Processor.from_blip2(path_or_id, max_text_length=model.config.max_text_length)
    except (OSError, ValueError, ConversionError) as error:
        raise TrainingError(
            f"--model {path_or_id!r} is neither a preset ({', '.join(PRESETS)}), a saved FashionBLIP-2 folder, "
            f"nor a loadable BLIP-2 retrieval checkpoint: {error}"
        ) from error
    return model, processor


def resolve_init_from(path: Path) -> Path:
    """A model folder, or a run folder whose best/ (else final/) is taken."""
    if _is_fashionblip2_folder(path):
        return path
    for name in ("best", "final"):
        if _is_fashionblip2_folder(path / name):
            return path / name
    raise TrainingError(f"--init-from {path}: neither a saved FashionBLIP-2 folder nor a run folder with best/ or final/")


def _load_saved(path: Path, overrides: dict[str, Any]):
    from modeling_fashionblip2 import FashionBlip2Config, FashionBlip2Model, FashionBlip2Processor

    config = _model_config(FashionBlip2Config.from_pretrained, str(path), overrides)
    return FashionBlip2Model.from_pretrained(path, config=config), FashionBlip2Processor.from_pretrained(path)


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW with four groups: {adapters+mixers, the rest} x {weight decay, none}."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        lowered = name.lower()
        is_adapter = any(key in lowered for key in ADAPTER_PARAMETER_KEYS)
        decays = parameter.ndim >= 2 and not any(key in lowered for key in NO_DECAY_KEYS)
        groups.setdefault((is_adapter, decays), []).append(parameter)
    if not groups:
        raise TrainingError("the model has no trainable parameters")
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": args.adapter_learning_rate if is_adapter else args.learning_rate,
                "weight_decay": args.weight_decay if decays else 0.0,
                "name": f"{'adapters' if is_adapter else 'qformer'}{'' if decays else '-no-decay'}",
            }
            for (is_adapter, decays), params in sorted(groups.items())
        ]
    )


def build_scheduler(optimizer: torch.optim.Optimizer, plan: RunPlan):
    """Linear warm-up then cosine decay to zero over the run's optimizer steps."""
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, plan.warmup_steps, plan.total_steps)


# ---------------------------------------------------------------------------------------------- resume
def resume_state(accelerator, args: argparse.Namespace, output_dir: Path, plan: RunPlan) -> tuple[TrainerState, Path | None]:
    """Load a checkpoint (model, optimizer, scheduler, RNG states) and return where training stands."""
    if args.resume_from_checkpoint is None:
        return TrainerState(global_batch_size=plan.global_batch_size), None
    checkpoint = resolve_resume(args.resume_from_checkpoint, output_dir)
    state = TrainerState.read(checkpoint)
    if state.global_batch_size != plan.global_batch_size:
        raise CheckpointError(
            f"{checkpoint} was trained with a global batch of {state.global_batch_size} examples per step, this "
            f"run uses {plan.global_batch_size}: the data position cannot be resumed"
        )
    accelerator.load_state(str(checkpoint))
    return state, checkpoint


def iterate_batches(loader, batches_per_epoch: int, batches_seen: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless stream of batches, starting exactly after the `batches_seen`-th (epoch and offset)."""
    from accelerate import skip_first_batches

    epoch, offset = divmod(batches_seen, batches_per_epoch)
    while True:
        current = skip_first_batches(loader, offset) if offset else loader
        # DataLoaderShard.__iter__ re-applies its own epoch counter to the sampler and dataset, so set it on
        # the loader being iterated (the skipping one is a fresh loader starting at epoch 0).
        current.set_epoch(epoch)
        yield from current
        epoch, offset = epoch + 1, 0


# ---------------------------------------------------------------------------------------------- training
def optimizer_step(accelerator, model, optimizer, scheduler, batches, args: argparse.Namespace, step: int) -> float:
    """One optimizer step over `--gradient-accumulation-steps` batches; returns the mean loss of all processes."""
    accumulation = args.gradient_accumulation_steps
    total = torch.zeros((), device=accelerator.device)
    for micro in range(accumulation):
        batch = next(batches)
        # Only the last micro-batch all-reduces gradients across processes.
        context = accelerator.no_sync(model) if micro < accumulation - 1 else nullcontext()
        with context:
            loss = model(**batch, return_loss=True).loss
            accelerator.backward(loss / accumulation)
        total += loss.detach().float()
    mean_loss = accelerator.reduce(total / accumulation, reduction="mean").item()
    if not math.isfinite(mean_loss):
        raise NonFiniteLossError(f"the loss is {mean_loss} at step {step}")
    if args.max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return mean_loss


def evaluate_model(accelerator, model, processor, args: argparse.Namespace) -> dict | None:
    """The Fashion IQ protocol (eval_cir) on --eval-dataset/--eval-split, on the main process while the
    others wait; returns the results.json dict there and None elsewhere."""
    results = None
    if accelerator.is_main_process:
        import eval_cir

        results = eval_cir.evaluate(
            accelerator.unwrap_model(model),
            processor,
            args.eval_dataset or args.dataset[0],
            args.eval_configs or args.configs,
            split=args.eval_split,
            batch_size=args.eval_batch_size,
            caption_join=args.caption_join,
            k_values=args.eval_k_values,
            progress=False,
        )
    accelerator.wait_for_everyone()
    return results


class MetricsLog:
    """`metrics.jsonl` (one JSON object per line, appended and flushed) plus the Accelerate trackers."""

    def __init__(self, accelerator, output_dir: Path, resumed_step: int):
        self.accelerator = accelerator
        self.path = output_dir / "metrics.jsonl"
        if accelerator.is_main_process and self.path.exists():
            # Lines a killed run wrote after its last checkpoint are about to be written again.
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= resumed_step]
            _write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def write(self, step: int, record: dict[str, Any]) -> None:
        scalars = {key: value for key, value in _flatten(record).items() if isinstance(value, (int, float))}
        self.accelerator.log(scalars, step=step)
        if self.accelerator.is_main_process:
            with self.path.open("a") as stream:
                stream.write(json.dumps({"step": step, **record}) + "\n")


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def eval_record(results: dict) -> dict[str, Any]:
    """The recall figures worth logging from a results.json dict."""
    record = {"eval/average": results["average"]}
    for config, values in results["configs"].items():
        record[f"eval/{config}"] = {k: v for k, v in values.items() if k.startswith("recall@")}
    return record


@dataclass(frozen=True)
class TrainingRun:
    """Everything `setup` prepares: the prepared objects, the plan and where training stands."""

    accelerator: Any
    model: torch.nn.Module
    processor: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: torch.utils.data.DataLoader
    plan: RunPlan
    output_dir: Path
    sources: tuple[str, ...]


def setup(args: argparse.Namespace) -> TrainingRun:
    """accelerator -> seed -> output dir -> data -> model -> optimizer/scheduler -> `prepare`."""
    from accelerate.utils import set_seed

    accelerator = build_accelerator(args)
    hint = cpu_thread_hint(accelerator)
    if hint and accelerator.is_main_process:
        print(hint, file=sys.stderr)
    set_seed(args.seed)
    output_dir = prepare_output_dir(args, accelerator)
    triplets = load_training_triplets(args.dataset, args.configs, hard_negatives=args.hard_negatives)
    plan = plan_run(args, len(triplets.table), accelerator.num_processes)
    model, processor = load_model_and_processor(args, triplets.texts())
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    pixels = None
    if args.cache_images:
        pixels = preprocess_pixels(triplets.table, processor, progress=accelerator.is_local_main_process)
    dataset = TripletDataset(
        triplets.table,
        seed=args.seed,
        caption_augmentation=args.caption_augmentation,
        caption_join=args.caption_join,
        pixels=pixels,
    )
    loader = build_dataloader(dataset, processor, batch_size=args.batch_size, seed=args.seed, num_workers=args.num_workers)
    optimizer = build_optimizer(model, args)
    scheduler = build_scheduler(optimizer, plan)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    return TrainingRun(accelerator, model, processor, optimizer, scheduler, loader, plan, output_dir, triplets.sources)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """The whole run: setup -> resume -> loop of train / evaluate / save -> export -> `end_training`."""
    started = time.monotonic()
    run = setup(args)
    accelerator = run.accelerator
    state, resumed_from = resume_state(accelerator, args, run.output_dir, run.plan)
    run_config = write_run_config(args, run.plan, run.sources, accelerator, run.output_dir)
    if args.report_to != "none":
        accelerator.init_trackers(args.project_name, config=_tracker_config(run_config))
    metrics = MetricsLog(accelerator, run.output_dir, state.global_step)
    if accelerator.is_main_process:
        print(
            f"training on {run.plan.train_size} triplets ({'; '.join(run.sources)}), {run.plan.num_processes} "
            f"process(es), {run.plan.global_batch_size} examples/step, {run.plan.total_steps} steps"
            + (f", resuming from {resumed_from} at step {state.global_step}" if resumed_from else ""),
            file=sys.stderr,
        )
    state, last_checkpoint, last_eval = _loop(run, args, state, metrics, resumed_from)
    final_dir = run.output_dir / "final"
    if accelerator.is_main_process:
        save_pretrained_atomic(accelerator.unwrap_model(run.model), run.processor, final_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    summary = {
        "steps": state.global_step,
        "seconds": round(time.monotonic() - started, 1),
        "examples_per_step": run.plan.global_batch_size,
        "final_model": str(final_dir),
        "best_model": str(run.output_dir / "best") if state.best_step is not None else None,
        "best_step": state.best_step,
        "best_mean_recall": state.best_metric,
        "last_eval": last_eval,
        "last_checkpoint": str(last_checkpoint) if last_checkpoint else None,
        "metrics": str(metrics.path),
    }
    if accelerator.is_main_process:
        print(format_summary(summary), file=sys.stderr)
    return summary


def _loop(run: TrainingRun, args: argparse.Namespace, state: TrainerState, metrics: MetricsLog, resumed_from):
    """Train / evaluate / save until the planned step; returns (state, last checkpoint, last eval average)."""
    from tqdm.auto import tqdm

    accelerator, plan = run.accelerator, run.plan
    batches = iterate_batches(run.loader, plan.batches_per_epoch, state.batches_seen)
    last_checkpoint, last_eval = resumed_from, None
    window_loss, window_steps, window_start = 0.0, 0, time.monotonic()
    run.model.train()
    with tqdm(total=plan.total_steps, initial=state.global_step, desc="train", dynamic_ncols=True,
              disable=not accelerator.is_local_main_process) as progress:
        while state.global_step < plan.total_steps:
            step = state.global_step + 1
            try:
                loss = optimizer_step(accelerator, run.model, run.optimizer, run.scheduler, batches, args, step)
            except NonFiniteLossError as error:
                keep = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was saved"
                raise NonFiniteLossError(f"{error}; stopped before applying it; {keep}") from None
            state = replace(state, global_step=step, batches_seen=state.batches_seen + args.gradient_accumulation_steps)
            window_loss, window_steps = window_loss + loss, window_steps + 1
            progress.update(1)
            if step % args.logging_steps == 0 or step == plan.total_steps:
                rates = {f"lr/{group['name']}": group["lr"] for group in run.optimizer.param_groups}
                metrics.write(step, {
                    "train/loss": window_loss / window_steps,
                    "train/epoch": state.batches_seen / plan.batches_per_epoch,
                    "train/steps_per_second": window_steps / (time.monotonic() - window_start),
                    **rates,
                })  # fmt: skip
                progress.set_postfix(loss=f"{window_loss / window_steps:.4f}")
                window_loss, window_steps, window_start = 0.0, 0, time.monotonic()
            if not args.no_eval and ((args.eval_steps and step % args.eval_steps == 0) or step == plan.total_steps):
                state, last_eval = _evaluate_and_keep_best(run, args, state, metrics)
            if step % args.save_steps == 0 or step == plan.total_steps:
                last_checkpoint = save_checkpoint(accelerator, run.output_dir, state, total_limit=args.save_total_limit)
    return state, last_checkpoint, last_eval


def _evaluate_and_keep_best(run: TrainingRun, args: argparse.Namespace, state: TrainerState, metrics: MetricsLog):
    results = evaluate_model(run.accelerator, run.model, run.processor, args)
    if results is None:  # not the main process
        return state, None
    metrics.write(state.global_step, eval_record(results))
    mean = selection_metric(results["average"])
    if state.best_metric is None or mean > state.best_metric:
        save_pretrained_atomic(run.accelerator.unwrap_model(run.model), run.processor, run.output_dir / "best")
        state = replace(state, best_metric=mean, best_step=state.global_step)
    return state, results["average"]


def selection_metric(average: dict[str, float | None]) -> float:
    """Fashion IQ's headline (R@10 + R@50) / 2, or the mean of all cut-offs when it was not computed."""
    if average.get("mean") is not None:
        return average["mean"]
    recalls = [value for key, value in average.items() if key.startswith("recall@")]
    return sum(recalls) / len(recalls)


def _tracker_config(run_config: dict) -> dict[str, Any]:
    """TensorBoard's hparams accept scalars and strings only."""
    flat = _flatten({"args": run_config["args"], "plan": run_config["plan"]})
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in flat.items()}


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"done: {summary['steps']} steps in {summary['seconds']} s ({summary['examples_per_step']} examples/step)"]
    if summary["best_step"] is not None:
        lines.append(f"best validation score {summary['best_mean_recall']:.2f} at step {summary['best_step']}")
    if summary["last_eval"]:
        lines.append("last evaluation: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["last_eval"].items() if v is not None))
    lines.append(f"final model: {summary['final_model']}")
    if summary["best_model"]:
        lines.append(f"best model:  {summary['best_model']}")
    lines.append(f"checkpoint:  {summary['last_checkpoint']}")
    lines.append(f"metrics:     {summary['metrics']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (DataError, CheckpointError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
