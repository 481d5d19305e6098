"""The shipped accelerate configs: each parses, launches (as far as accelerate checks without GPUs) and says what its name says."""
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import launch_command_parser
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).resolve().parents[1] / "rmsecrets" / "configs" / "accelerate"
EXPECTED = {  # file -> (distributed_type, num_processes)
    "single_gpu.yaml": (DistributedType.NO, 1),
    "ddp.yaml": (DistributedType.MULTI_GPU, 8),
    "zero2.yaml": (DistributedType.DEEPSPEED, 8),
    "zero3.yaml": (DistributedType.DEEPSPEED, 8),
    "fsdp.yaml": (DistributedType.FSDP, 8),
}


def test_every_config_is_shipped():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_with_the_expected_settings(name):
    config = load_config_from_file(str(CONFIGS / name))   # unknown top-level keys raise here
    assert isinstance(config, ClusterConfig)
    assert (config.distributed_type, config.num_processes) == EXPECTED[name]
    assert config.mixed_precision == "bf16" and not config.use_cpu


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_nested_keys_are_launch_options(name):
    """accelerate copies deepspeed_config/fsdp_config keys onto its launch arguments without checking them: check here."""
    config = load_config_from_file(str(CONFIGS / name))
    options = {a.dest for a in launch_command_parser()._actions}
    for key in config.deepspeed_config: assert key in options, f"{name}: deepspeed_config.{key} is no launch option"
    for key in config.fsdp_config:
        assert (key if key.startswith("fsdp") else "fsdp_" + key) in options, f"{name}: fsdp_config.{key} is no launch option"


def test_deepspeed_and_fsdp_settings():
    zero2, zero3, fsdp = (load_config_from_file(str(CONFIGS / n)) for n in ("zero2.yaml", "zero3.yaml", "fsdp.yaml"))
    assert zero2.deepspeed_config["zero_stage"] == 2 and zero3.deepspeed_config["zero_stage"] == 3
    assert zero3.deepspeed_config["zero3_save_16bit_model"] is True
    for ds in (zero2, zero3):   # left out so that it follows the loop's --grad-accum (accelerate fills "auto")
        assert "gradient_accumulation_steps" not in ds.deepspeed_config
    f = fsdp.fsdp_config
    assert (f["fsdp_sharding_strategy"], f["fsdp_auto_wrap_policy"]) == ("FULL_SHARD", "TRANSFORMER_BASED_WRAP")
    assert f["fsdp_state_dict_type"] == "FULL_STATE_DICT" and f["fsdp_use_orig_params"] is True


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_launch_accepts_the_config(name):
    """The launcher's own validation (a private function of accelerate, at the version requirements.lock pins)."""
    from accelerate.commands import launch
    validate = launch._validate_launch_command
    args = validate(launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "train.py"]))[0]
    kind, n = EXPECTED[name]
    assert args.num_processes == n and args.mixed_precision == "bf16"
    assert (args.use_deepspeed, args.use_fsdp, args.multi_gpu) == (
        kind == DistributedType.DEEPSPEED, kind == DistributedType.FSDP, kind == DistributedType.MULTI_GPU)
    if kind == DistributedType.DEEPSPEED:
        assert args.zero_stage == load_config_from_file(str(CONFIGS / name)).deepspeed_config["zero_stage"]


def test_configs_by_name_and_from_the_command_line(capsys):
    from rmsecrets.cli import main
    from rmsecrets.scale import ACCELERATE_CONFIGS, accelerate_config
    assert sorted(f"{n}.yaml" for n in ACCELERATE_CONFIGS) == sorted(EXPECTED)
    assert all(accelerate_config(n) == CONFIGS / f"{n}.yaml" for n in ACCELERATE_CONFIGS)
    assert main(["config", "zero2"]) == 0
    assert capsys.readouterr().out.strip() == str(CONFIGS / "zero2.yaml")
    with pytest.raises(SystemExit) as bad: main(["config", "zero4"])
    assert bad.value.code != 0 and "zero3" in str(bad.value.code) + capsys.readouterr().err


def test_the_wheel_carries_the_configs_and_says_alpha(wheel):
    """`pip install` of the built wheel alone gives the configs: they are package data, beside the modules."""
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n for n in names if n.startswith("rmsecrets/configs/accelerate/")) == \
        sorted(f"rmsecrets/configs/accelerate/{n}" for n in EXPECTED)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Development Status :: 3 - Alpha" in metadata
