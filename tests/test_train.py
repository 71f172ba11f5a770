"""train_accelerate.py: options, data pipeline, a full tiny run and the bad inputs of issue 5."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import facap_train.accelerator as accelerator_module
import train_accelerate as ta
from facap_train import optim
from facap_train.accelerator import cpu_thread_hint
from facap_train.checkpoint import (
    CheckpointError,
    TrainerState,
    list_checkpoints,
    prune_checkpoints,
    remove_interrupted_saves,
    resolve_resume,
)
from facap_train.errors import TrainingError
from facap_train.evaluation import selection_metric
from facap_train.models import load_model_and_processor, resolve_init_from
from facap_train.options import parse_args
from facap_dataset.errors import DataError
from facap_dataset.images import load_rgb
from facap_train.data import (
    EpochShuffleSampler,
    TripletCollator,
    TripletDataset,
    choose_caption,
    load_training_triplets,
    preprocess_pixels,
)

CONFIGS = "dress,shirt,toptee"


def tiny_argv(dataset: Path, output_dir: Path, *extra: str) -> list[str]:
    """A tiny-preset run on the synthetic fixture (81 train triplets, 32 px); `extra` options override."""
    return [
        "--dataset", str(dataset), "--configs", CONFIGS, "--model", "tiny", "--output-dir", str(output_dir),
        "--batch-size", "8", "--max-steps", "4", "--learning-rate", "1e-3", "--adapter-learning-rate", "1e-3",
        "--num-workers", "0", "--logging-steps", "1", "--save-steps", "2", "--eval-batch-size", "32",
        "--eval-k-values", "1,5,10", *extra,
    ]  # fmt: skip


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    code = ta.main(argv)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def finished_run(synthetic_dir, tmp_path_factory) -> Path:
    """One complete tiny run with evaluation, checkpoints, pruning and TensorBoard; tests only read it."""
    output_dir = tmp_path_factory.mktemp("train") / "run"
    argv = tiny_argv(synthetic_dir, output_dir, "--max-steps", "6", "--eval-steps", "3", "--save-total-limit", "2",
                     "--report-to", "tensorboard", "--cache-images")  # fmt: skip
    assert ta.main(argv) == 0
    return output_dir


# ------------------------------------------------------------------------------------------------ options
def test_config_file_supplies_options_and_command_line_wins(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("dataset: data/a\nconfigs: [dress, shirt]\nmodel: tiny\noutput-dir: out\nmax_steps: 7\n"
                      "learning-rate: 0.001\nreport_to: tensorboard\n")  # fmt: skip
    args = parse_args(["--config", str(config), "--max-steps", "9"])
    assert args.dataset == ["data/a"] and args.configs == ["dress", "shirt"] and args.output_dir == Path("out")
    assert args.max_steps == 9 and args.learning_rate == 1e-3 and args.report_to == "tensorboard"

    as_json = tmp_path / "train.json"
    as_json.write_text(json.dumps({"dataset": ["a", "b"], "configs": "dress", "init_from": "runs/x", "output_dir": "o"}))
    args = parse_args(["--config", str(as_json)])
    assert args.dataset == ["a", "b"] and args.configs == ["dress"] and args.init_from == Path("runs/x")


def test_model_overrides_set_config_fields_and_refuse_unknown_ones(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("model_overrides: {adapter_dim: 4, temperature_init: 0.05}\n")
    args = parse_args(["--config", str(config), "--dataset", "d", "--configs", "dress", "--model", "tiny",
                          "--output-dir", "o"])  # fmt: skip
    assert args.model_overrides == {"adapter_dim": 4, "temperature_init": 0.05}
    model, _ = load_model_and_processor(args, ["is red", "has long sleeves"])
    assert model.config.adapter_dim == 4 and model.config.temperature_init == 0.05
    args = parse_args(["--dataset", "d", "--configs", "dress", "--model", "tiny", "--output-dir", "o",
                          "--model-overrides", '{"adapter_dimm": 4}'])  # fmt: skip
    with pytest.raises(TrainingError, match="adapter_dimm is not a FashionBLIP-2 config field"):
        load_model_and_processor(args, ["is red"])


@pytest.mark.parametrize(
    "content, message",
    [
        ("dataset: a\nlearning_rat: 1\n", "unknown option 'learning_rat'"),
        ("report_to: mlflow\n", "invalid choice: 'mlflow'"),
        ("max_grad_norm: .nan\n", "argument --max-grad-norm: expected a finite number >= 0"),
        ("- just\n- a list\n", "expected a mapping"),
        ("model_overrides: '[1]'\n", "expected a JSON object"),
    ],
)
def test_config_file_errors_name_the_culprit(tmp_path, capsys, content, message):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--config", str(config)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and f"--config {config}" in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-steps", "5", "--num-epochs", "1"], "not both"),
        (["--init-from", "x"], "exactly one of --model and --init-from"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--warmup-ratio", "1.5"], "--warmup-ratio"),
    ],
)
def test_bad_option_combinations(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        parse_args(tiny_argv(tmp_path, tmp_path / "out", *extra))
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- data
def test_caption_augmentation_uses_the_shared_join_rule():
    pair = ["is red ", "has long sleeves."]
    rng = random.Random(0)
    seen = {choose_caption(pair, "all", "fashioniq", rng) for _ in range(200)}
    assert seen == {"Is red and has long sleeves", "Has long sleeves and is red", "is red", "has long sleeves."}
    seen = {choose_caption(pair, "both-orders", "fashioniq", rng) for _ in range(100)}
    assert seen == {"Is red and has long sleeves", "Has long sleeves and is red"}
    assert choose_caption(pair, "none", "fashioniq", rng) == "Is red and has long sleeves"
    assert choose_caption(["  a single FACap sentence "], "all", "fashioniq", rng) == "a single FACap sentence"


def test_examples_are_a_pure_function_of_seed_epoch_and_index(synthetic_dir, tiny_processor):
    table = load_training_triplets([str(synthetic_dir)], CONFIGS.split(",")).table
    first, second = TripletDataset(table, seed=3), TripletDataset(table, seed=3)
    indices = list(range(len(table)))
    texts = [example["text"] for example in first.__getitems__(indices)]
    assert texts == [example["text"] for example in second.__getitems__(indices)]
    second.set_epoch(1)
    assert texts != [example["text"] for example in second.__getitems__(indices)]  # augmentation varies by epoch
    example = first[0]
    assert example["reference"].mode == "RGB" and example["target"].size == (32, 32)

    # Cached pixels give exactly the batches that decoding and processing every step gives.
    collate = TripletCollator(tiny_processor)
    cached = TripletDataset(table, seed=3, pixels=preprocess_pixels(table, tiny_processor, batch_size=16))
    some = [5, 0, 80, 41]
    from_images, from_cache = collate(first.__getitems__(some)), collate(cached.__getitems__(some))
    assert from_images.keys() == from_cache.keys()
    assert all(torch.equal(from_images[key], from_cache[key]) for key in from_images)

    sampler = EpochShuffleSampler(len(table), seed=3)
    epoch0 = list(sampler)
    assert sorted(epoch0) == indices and list(sampler) == epoch0
    sampler.set_epoch(1)
    assert list(sampler) != epoch0


def test_hard_negatives_reach_the_model_as_negative_pixel_values(
    synthetic_dir, synthetic_negatives_dir, tiny_processor, tmp_path, capsys
):
    triplets = load_training_triplets([str(synthetic_negatives_dir)], CONFIGS.split(","))
    assert triplets.has_negatives and all("with hard negatives" in source for source in triplets.sources)
    table = triplets.table
    some = [5, 0, 80, 41]
    batch = TripletCollator(tiny_processor)(TripletDataset(table, seed=3).__getitems__(some))
    negatives = [load_rgb(table[i]["negative_image"]["bytes"]) for i in some]
    assert torch.equal(batch["negative_pixel_values"], tiny_processor(images=negatives)["pixel_values"])
    cached = TripletDataset(table, seed=3, pixels=preprocess_pixels(table, tiny_processor, batch_size=16))
    assert cached.pixels.shape[:2] == (len(table), 3)
    from_cache = TripletCollator(tiny_processor)(cached.__getitems__(some))
    assert from_cache.keys() == batch.keys() and all(torch.equal(batch[key], from_cache[key]) for key in batch)

    assert not load_training_triplets([str(synthetic_negatives_dir)], ["dress"], hard_negatives=False).has_negatives
    with pytest.raises(DataError, match=rf"{synthetic_dir}:dress lack\(s\) the 'negative_image' column"):
        load_training_triplets([str(synthetic_negatives_dir), str(synthetic_dir)], ["dress"])
    mixed = load_training_triplets([str(synthetic_negatives_dir), str(synthetic_dir)], ["dress"], hard_negatives=False)
    assert len(mixed.table) == 2 * len(load_training_triplets([str(synthetic_dir)], ["dress"]).table)

    code, err = run_main(tiny_argv(synthetic_negatives_dir, tmp_path / "run", "--max-steps", "2", "--no-eval"), capsys)
    assert code == 0, err
    assert "with hard negatives" in err


def test_cpu_thread_hint_names_the_launcher_option(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(accelerator_module.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    one_cpu_process = SimpleNamespace(device=torch.device("cpu"), num_processes=1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert "--num_cpu_threads_per_process 4" in cpu_thread_hint(one_cpu_process)
        assert cpu_thread_hint(SimpleNamespace(device=torch.device("cuda"), num_processes=1)) is None
        assert cpu_thread_hint(SimpleNamespace(device=torch.device("cpu"), num_processes=2)) is None
        torch.set_num_threads(4)
        assert cpu_thread_hint(one_cpu_process) is None
    finally:
        torch.set_num_threads(threads)


def test_optimizer_groups_and_schedule():
    from modeling_fashionblip2 import FashionBlip2Config, FashionBlip2Model

    model = FashionBlip2Model(FashionBlip2Config.from_preset("tiny"))
    args = parse_args(["--dataset", "d", "--configs", "dress", "--model", "tiny", "--output-dir", "o",
                          "--learning-rate", "1e-4", "--adapter-learning-rate", "1e-3", "--weight-decay", "0.1"])  # fmt: skip
    optimizer = optim.build_optimizer(model, args)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {group["name"]: group for group in optimizer.param_groups}
    adapter_names = {names[id(p)] for p in groups["adapters"]["params"] + groups["adapters-no-decay"]["params"]}
    assert any(n.startswith("adapters.") for n in adapter_names) and any("token_mix" in n for n in adapter_names)
    assert all(n.startswith(("adapters.", "matching_head.")) for n in adapter_names)
    assert groups["adapters"]["lr"] == 1e-3 and groups["qformer"]["lr"] == 1e-4
    no_decay = {names[id(p)] for p in groups["qformer-no-decay"]["params"]}
    assert "query_tokens" in no_decay and "temperature" in no_decay and groups["qformer-no-decay"]["weight_decay"] == 0
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == trainable

    plan = optim.RunPlan(num_processes=1, train_size=100, batches_per_epoch=10, global_batch_size=10, total_steps=100,
                      warmup_steps=10)  # fmt: skip
    scheduler = optim.build_scheduler(optimizer, plan)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"] / groups[optimizer.param_groups[0]["name"]]["initial_lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == 0 and rates[5] == pytest.approx(0.5) and rates[10] == pytest.approx(1.0)
    assert rates[55] == pytest.approx(0.5, abs=0.02) and rates[-1] < 0.01


def test_plan_counts_steps_epochs_and_warmup():
    def plan(*extra: str, processes: int = 1) -> optim.RunPlan:
        argv = ["--dataset", "d", "--configs", "dress", "--model", "tiny", "--output-dir", "o", "--batch-size", "8", *extra]
        return optim.plan_run(parse_args(argv), 81, processes)

    assert plan().total_steps == 10 and plan().warmup_steps == 0  # one epoch by default; 5 % of 10 steps
    by_epochs = plan("--num-epochs", "1.5", "--gradient-accumulation-steps", "2")
    assert (by_epochs.batches_per_epoch, by_epochs.total_steps, by_epochs.global_batch_size) == (10, 8, 16)
    two = plan("--max-steps", "100", "--warmup-ratio", "0.1", processes=2)
    assert (two.batches_per_epoch, two.global_batch_size, two.warmup_steps) == (5, 16, 10)


def test_gradient_accumulation_consumes_that_many_batches_per_step(synthetic_dir, tmp_path, capsys):
    output_dir = tmp_path / "accumulate"
    argv = tiny_argv(synthetic_dir, output_dir, "--max-steps", "2", "--gradient-accumulation-steps", "3", "--no-eval")
    code, err = run_main(argv, capsys)
    assert code == 0, err
    state = TrainerState.read(list_checkpoints(output_dir)[-1])
    assert (state.global_step, state.batches_seen, state.global_batch_size) == (2, 6, 24)


# --------------------------------------------------------------------------------------------- a full run
def test_run_writes_models_metrics_checkpoints_and_logs(finished_run):
    resolved = json.loads((finished_run / "args.json").read_text())
    assert resolved["args"]["max_steps"] == 6 and resolved["plan"]["total_steps"] == 6
    assert resolved["plan"]["global_batch_size"] == 8 and len(resolved["train_sources"]) == 3

    records = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "train/loss" in r]
    eval_records = [r for r in records if "eval/average" in r]
    assert train_steps == [1, 2, 3, 4, 5, 6] and [r["step"] for r in eval_records] == [3, 6]
    assert all(0 <= r["eval/average"]["recall@10"] <= 100 for r in eval_records)
    assert {"eval/dress", "eval/shirt", "eval/toptee"} <= set(eval_records[0])

    # --save-total-limit 2 kept the newest two of checkpoints 2, 4, 6; no temporary folder is left behind.
    assert [p.name for p in list_checkpoints(finished_run)] == ["checkpoint-4", "checkpoint-6"]
    assert sorted(p.name for p in (finished_run / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-6"]
    state = TrainerState.read(finished_run / "checkpoints" / "checkpoint-6")
    assert state.global_step == 6 and state.batches_seen == 6 and state.best_step in (3, 6)
    best_mean = max(selection_metric(r["eval/average"]) for r in eval_records)
    assert state.best_metric == pytest.approx(best_mean)
    assert list((finished_run / "logs").rglob("events.out.tfevents.*")), "no TensorBoard event file"


def test_saved_models_load_with_remote_code(finished_run, synthetic_dir):
    from transformers import AutoModel, AutoProcessor

    from facap_dataset.images import load_rgb

    for name in ("final", "best"):
        folder = finished_run / name
        assert (folder / "modeling_fashionblip2.py").is_file()
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        triplets = load_training_triplets([str(synthetic_dir)], ["dress"]).table
        row = triplets[0]
        batch = processor(images=[load_rgb(row["reference_image"]["bytes"])], text=[row["captions"][0]])
        with torch.no_grad():
            query = model.get_query_embeddings(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        assert query.shape == (1, model.config.embedding_dim) and torch.isfinite(query).all()


def test_resume_from_a_checkpoint_path_into_a_new_folder(finished_run, synthetic_dir, tmp_path, capsys):
    resumed = tmp_path / "resumed"
    argv = tiny_argv(synthetic_dir, resumed, "--max-steps", "6", "--eval-steps", "3", "--save-total-limit", "2",
                     "--cache-images", "--resume-from-checkpoint", str(finished_run / "checkpoints" / "checkpoint-4"))  # fmt: skip
    code, err = run_main(argv, capsys)
    assert code == 0, err
    finished = load_file(finished_run / "final" / "model.safetensors")
    for name, tensor in load_file(resumed / "final" / "model.safetensors").items():
        assert torch.equal(tensor, finished[name]), name
    records = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in records}) == [5, 6]  # a new folder logs only the steps it trained


def test_init_from_a_run_folder_fine_tunes_its_best_model(finished_run, synthetic_dir, tmp_path, capsys):
    argv = tiny_argv(synthetic_dir, tmp_path / "finetune", "--max-steps", "1", "--no-eval")
    argv[argv.index("--model"):argv.index("--model") + 2] = ["--init-from", str(finished_run)]
    code, err = run_main(argv, capsys)
    assert code == 0, err
    assert (tmp_path / "finetune" / "final" / "config.json").is_file()
    with pytest.raises(TrainingError, match="neither a saved FashionBLIP-2 folder"):
        resolve_init_from(tmp_path)


def test_model_from_a_blip2_retrieval_checkpoint(synthetic_dir, tiny_blip2_config, tiny_processor, tmp_path, capsys):
    import copy

    from transformers import Blip2ForImageTextRetrieval, Blip2Processor

    checkpoint = tmp_path / "blip2"
    Blip2ForImageTextRetrieval(tiny_blip2_config).save_pretrained(checkpoint)
    Blip2Processor(tiny_processor.image_processor, copy.deepcopy(tiny_processor.tokenizer)).save_pretrained(checkpoint)
    argv = tiny_argv(synthetic_dir, tmp_path / "run", "--max-steps", "1", "--no-eval")
    argv[argv.index("--model") + 1] = str(checkpoint)
    code, err = run_main(argv, capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "final" / "config.json").read_text())["model_type"] == "fashionblip2"

    argv[argv.index("--model") + 1] = str(tmp_path / "not-a-model")
    argv[argv.index("--output-dir") + 1] = str(tmp_path / "run2")
    code, err = run_main(argv, capsys)
    assert code == 2 and "is neither a preset (tiny, demo, blip2-vit-g)" in err


# ------------------------------------------------------------------------------------------------ bad input
def test_output_dir_holding_a_run_is_refused_unless_overwrite(finished_run, synthetic_dir, tmp_path, capsys):
    code, err = run_main(tiny_argv(synthetic_dir, finished_run), capsys)
    assert code == 2 and f"--output-dir {finished_run} already holds a run" in err and "--overwrite" in err

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    (other / "metrics.jsonl").write_text('{"step": 99}\n')
    code, err = run_main(tiny_argv(synthetic_dir, other, "--max-steps", "1", "--no-eval", "--overwrite"), capsys)
    assert code == 0, err
    assert (other / "notes.txt").read_text() == "keep me"  # only run artifacts are replaced
    assert [json.loads(line)["step"] for line in (other / "metrics.jsonl").read_text().splitlines()] == [1]


@pytest.mark.parametrize(
    "configs, message",
    [
        ("dress,skirt", "unknown dataset config 'skirt'"),
        ("dress-gallery", "lacks the triplet column(s) captions, reference_image, target_image"),
    ],
)
def test_unusable_dataset_configs(synthetic_dir, tmp_path, capsys, configs, message):
    argv = tiny_argv(synthetic_dir, tmp_path / "out")
    argv[argv.index("--configs") + 1] = configs
    code, err = run_main(argv, capsys)
    assert code == 2 and message in err


def test_empty_train_split_and_batch_larger_than_the_data(synthetic_dir, tmp_path, capsys):
    import datasets

    from facap_dataset.export import DatasetCardInfo, write_dataset

    dress = datasets.load_dataset(str(synthetic_dir), "dress")
    empty = write_dataset(
        tmp_path / "empty",
        {"dress": datasets.DatasetDict(train=dress["train"].select([]), validation=dress["validation"])},
        card=DatasetCardInfo(pretty_name="empty", description="", source="", license="other", build_command=""),
    )
    argv = tiny_argv(empty, tmp_path / "a")
    argv[argv.index("--configs") + 1] = "dress"
    code, err = run_main(argv, capsys)
    assert code == 2 and "'train' split" in err and "is empty" in err

    code, err = run_main(tiny_argv(synthetic_dir, tmp_path / "b", "--batch-size", "200"), capsys)
    assert code == 2 and "--batch-size 200 x 1 process(es) = 200 exceeds the 81 training triplets" in err


def test_resume_needs_a_checkpoint(finished_run, synthetic_dir, tmp_path, capsys):
    code, err = run_main(tiny_argv(synthetic_dir, tmp_path / "fresh", "--resume-from-checkpoint", "latest"), capsys)
    assert code == 2 and "no checkpoint in" in err
    code, err = run_main(tiny_argv(synthetic_dir, tmp_path / "x", "--resume-from-checkpoint", str(tmp_path)), capsys)
    assert code == 2 and "is not a training checkpoint" in err
    with pytest.raises(CheckpointError, match="no such folder"):
        resolve_resume(str(tmp_path / "missing"), tmp_path)
    # A different global batch would resume at the wrong data position.
    argv = tiny_argv(synthetic_dir, tmp_path / "y", "--batch-size", "4", "--resume-from-checkpoint",
                     str(finished_run / "checkpoints" / "checkpoint-4"))  # fmt: skip
    code, err = run_main(argv, capsys)
    assert code == 2 and "global batch of 8 examples per step, this run uses 4" in err


def test_missing_tracker_package_is_an_error(synthetic_dir, tmp_path, capsys):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    code, err = run_main(tiny_argv(synthetic_dir, tmp_path / "out", "--report-to", "wandb"), capsys)
    assert code == 2 and "--report-to wandb: the wandb package is not installed" in err


def test_latest_ignores_interrupted_saves_and_pruning_keeps_the_newest(tmp_path):
    for step in (3, 10, 7):
        folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(TrainerState(global_step=step).to_json())
    killed = tmp_path / "checkpoints" / ".checkpoint-12.tmp-x1y2"  # a save killed half-way (facap_io.atomic's name)
    killed.mkdir()
    assert list_checkpoints(tmp_path)[-1].name == "checkpoint-10"
    assert remove_interrupted_saves(tmp_path) == [killed] and not killed.exists()
    assert [p.name for p in prune_checkpoints(tmp_path, 2)] == ["checkpoint-3"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-7", "checkpoint-10"]


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(synthetic_dir, tmp_path, capsys):
    # An absurd learning rate overflows the weights after the first update: the second loss is NaN.
    output_dir = tmp_path / "nan"
    argv = tiny_argv(synthetic_dir, output_dir, "--learning-rate", "1e30", "--adapter-learning-rate", "1e30",
                     "--save-steps", "1", "--warmup-steps", "0", "--no-eval")  # fmt: skip
    code, err = run_main(argv, capsys)
    assert code == 1
    assert "error: the loss is nan at step 2" in err and f"last good checkpoint is {output_dir}" in err
    assert [p.name for p in list_checkpoints(output_dir)] == ["checkpoint-1"] and not (output_dir / "final").exists()


def test_saving_a_model_leaves_the_live_model_and_processor_unchanged(tiny_processor, tmp_path):
    """Only the main process saves best/ and final/; the processes' models must stay identical for the sharded
    evaluation (it compares fingerprints, config and processor settings included)."""
    from facap_retrieval.cache import model_fingerprint
    from facap_train.outputs import save_model
    from modeling_fashionblip2 import FashionBlip2Config, FashionBlip2Model

    model = FashionBlip2Model(FashionBlip2Config.from_preset("tiny"))
    before = model_fingerprint(model, tiny_processor)
    save_model(model, tiny_processor, tmp_path / "final")
    assert model_fingerprint(model, tiny_processor) == before
    assert json.loads((tmp_path / "final" / "config.json").read_text())["auto_map"]["AutoModel"]
