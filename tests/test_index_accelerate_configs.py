"""The example Accelerate config files of docs/scaling.md parse with Accelerate's own config class, and every
FSDP / DeepSpeed key is an option `accelerate launch` knows (an unknown key would be silently ignored)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import launch_command_parser
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).resolve().parents[1] / "docs" / "accelerate"


@pytest.mark.parametrize(
    ("name", "kind", "section"),
    [("ddp", DistributedType.MULTI_GPU, None), ("fsdp", DistributedType.FSDP, "fsdp_config"),
     ("deepspeed_zero2", DistributedType.DEEPSPEED, "deepspeed_config")],
)  # fmt: skip
def test_config_parses_and_names_only_known_launch_options(name, kind, section):
    path = CONFIGS / f"{name}.yaml"
    config = ClusterConfig.from_yaml_file(str(path))
    assert config.distributed_type == kind and config.mixed_precision == "bf16" and config.num_processes == 8
    if section is None:
        return
    options = yaml.safe_load(path.read_text())[section]
    argv = [token for key, value in options.items() for token in (f"--{key}", str(value).lower())]
    _, unknown = launch_command_parser().parse_known_args([*argv, "train_accelerate.py"])
    assert unknown == [], f"{path.name}: accelerate launch does not know {unknown}"


def test_fsdp_keeps_original_parameters_for_the_frozen_vit():
    options = yaml.safe_load((CONFIGS / "fsdp.yaml").read_text())["fsdp_config"]
    assert options["fsdp_use_orig_params"] is True  # frozen weights and trainable adapters share wrapped units
    assert set(options["fsdp_transformer_layer_cls_to_wrap"].split(",")) == {"Blip2EncoderLayer", "Blip2QFormerLayer"}
    assert yaml.safe_load((CONFIGS / "deepspeed_zero2.yaml").read_text())["deepspeed_config"]["zero_stage"] == 2
