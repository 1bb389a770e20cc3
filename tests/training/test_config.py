import pytest

from byol.cli import build_parser, config_from_args, main
from byol.runtime.errors import UserError
from byol.training.config import (
    PRESETS,
    RUNTIME_ONLY,
    TRAJECTORY_KEYS,
    TrainConfig,
    changed_trajectory_keys,
    merge,
    preset_values,
    read_yaml,
    resolve,
    save_yaml,
)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_validate(preset):
    cfg = resolve(preset)
    assert isinstance(cfg, TrainConfig)


def test_precedence_default_preset_file_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\nbatch-size: 32\n")
    cfg = resolve("smoke", str(path), {"batch_size": 16, "lr": None})
    assert cfg.epochs == 7  # file beats preset
    assert cfg.batch_size == 16  # command line beats file
    assert cfg.lr == resolve("smoke").lr  # None means "not given"
    assert cfg.subset == 512  # from the preset


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(UserError, match=r"bad.yaml: unknown key learning_rate"):
        resolve(config_file=str(path))


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"batch_size": -4}, "--batch-size"),
        ({"batch_size": 1}, "batch norm"),
        ({"epochs": 0}, "--epochs"),
        ({"base_tau": 1.5}, "--base-tau"),
        ({"image_size": 4}, "--image-size"),
        ({"backbone": "vgg"}, "--backbone"),
        ({"dataset": "imagenet"}, "--dataset"),
    ],
)
def test_invalid_values_name_the_option(overrides, match):
    with pytest.raises(UserError, match=match):
        resolve(overrides=overrides)


def test_wrong_types_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="'epochs' must be int"):
        merge(TrainConfig(), {"epochs": "many"}, "x.yaml")
    path = tmp_path / "broken.yaml"
    path.write_text("epochs: [1,\n")
    with pytest.raises(UserError, match="broken.yaml: not valid YAML"):
        read_yaml(path)
    with pytest.raises(UserError, match="no such file"):
        read_yaml(tmp_path / "missing.yaml")


def test_saved_config_reads_back_to_the_same_config(tmp_path):
    cfg = resolve("smoke", overrides={"stop_after_steps": 3, "resume": True, "channels_last": False})
    save_yaml(cfg, tmp_path / "config.yaml", resolved={"world_size": 1})
    again = resolve(config_file=str(tmp_path / "config.yaml"))
    assert again == resolve("smoke", overrides={"channels_last": False})


def test_each_option_is_written_once_with_its_help_and_the_registries_choices():
    from byol.data.datasets import DATASETS
    from byol.methods import METHODS
    from byol.models.backbones import ARCHITECTURES, STEMS
    from byol.training.config import FIELDS
    from byol.training.optim import OPTIMIZERS

    assert all(f.metadata["help"] for f in FIELDS.values())
    for name, registry in (("dataset", DATASETS), ("method", METHODS), ("optimizer", OPTIMIZERS), ("stem", STEMS)):
        assert FIELDS[name].metadata["choices"] == tuple(registry), name
    # backbones are open-ended (torchvision:NAME, timm:NAME): checked, and our own named in the help
    assert all(name in FIELDS["backbone"].metadata["help"] for name in ARCHITECTURES)
    assert FIELDS["backbone"].metadata["check"]("resnet18") is None
    assert "unknown backbone" in FIELDS["backbone"].metadata["check"]("vgg11")


# What the hand-written lists held before the options carried this themselves, and the methods' options since.
RUN_CHANGING_OPTIONS = {
    "dataset",
    "subset",
    "image_size",
    "crop_min_scale",
    "aug_remove",
    "method",
    "predictor",
    "negatives_beta",
    "negatives_temperature",
    "temperature",
    "norm",
    "backbone",
    "stem",
    "width",
    "projection_dim",
    "bottleneck_dim",
    "projector_hidden_dim",
    "predictor_hidden_dim",
    "sync_bn",
    "epochs",
    "batch_size",
    "lr",
    "warmup_epochs",
    "optimizer",
    "momentum",
    "weight_decay",
    "trust_coefficient",
    "base_tau",
    "precision",
    "seed",
    "local_crops",
    "local_size",
    "local_crop_scale",
    "queue_size",
    "queue_start_epoch",
    "prototypes",
    "sinkhorn_epsilon",
    "sinkhorn_iterations",
    "freeze_head_epochs",
    "student_temperature",
    "teacher_temperature",
    "teacher_temperature_start",
    "teacher_temperature_epochs",
    "center_momentum",
    "clip_grad",
    "lambda_offdiag",
    "sim_weight",
    "var_weight",
    "cov_weight",
    "final_weight_decay",
    "clip_lr",
    "lr_floor",
    "bias_lr_multiplier",
    "final_tau",
}


def test_trajectory_and_runtime_keys_are_derived_from_the_fields():
    assert set(TRAJECTORY_KEYS) == RUN_CHANGING_OPTIONS
    assert set(RUNTIME_ONLY) == {"resume", "stop_after_steps"}


def test_changed_trajectory_keys_compare_missing_keys_with_their_defaults():
    cfg = TrainConfig()
    saved = {k: v for k, v in cfg.to_dict().items() if k != "stem"}  # a checkpoint from before --stem existed
    assert changed_trajectory_keys(saved, cfg) == []
    assert changed_trajectory_keys({**saved, "lr": 1.0, "out": "elsewhere"}, cfg) == ["lr"]


@pytest.mark.parametrize(
    "values, named",
    [
        ({"stem": "big"}, "--stem: unknown stem 'big'"),
        ({"width": -1.0}, "--width: must be positive"),
        ({"device": "gpu!"}, "--device: unknown device"),
    ],
)
def test_options_checked_outside_a_config_name_the_option(values, named):
    from byol.training.config import check_options

    with pytest.raises(UserError, match=named):
        check_options(values)


def test_a_method_s_renamed_option_is_read_under_its_new_name_with_one_line(tmp_path, capsys):
    # a run folder written before the renames: DINO's bottleneck was projection_dim, its student's temperature
    # was temperature
    old = tmp_path / "config.yaml"
    old.write_text("method: dino\nprojection_dim: 32\ntemperature: 0.2\n")
    cfg = resolve(config_file=str(old))
    assert (cfg.bottleneck_dim, cfg.student_temperature) == (32, 0.2)
    assert (cfg.projection_dim, cfg.temperature) == (TrainConfig().projection_dim, TrainConfig().temperature)
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2 and all(str(old) in line for line in warnings)
    assert "'projection_dim' of --method dino is now 'bottleneck_dim'" in warnings[0]
    # a preset holds options for every method: its projection_dim stays the projection's size
    preset = preset_values("smoke")
    cfg = resolve("smoke", overrides={"method": "dino"})
    assert (cfg.projection_dim, cfg.bottleneck_dim) == (preset["projection_dim"], preset["bottleneck_dim"])
    assert cfg.student_temperature == TrainConfig().student_temperature and capsys.readouterr().err == ""
    # a file written since holds both names, and the new one is read
    save_yaml(resolve(overrides={"method": "dino", "student_temperature": 0.3}), tmp_path / "new.yaml")
    assert resolve(config_file=str(tmp_path / "new.yaml")).student_temperature == 0.3
    assert capsys.readouterr().err == ""


def test_a_checkpoint_written_before_a_rename_compares_under_the_new_name():
    cfg = resolve(overrides={"method": "dino", "student_temperature": 0.2})
    old = {**cfg.to_dict(), "temperature": 0.2}
    del old["student_temperature"]
    assert changed_trajectory_keys(old, cfg) == []
    assert changed_trajectory_keys({**old, "temperature": 0.3}, cfg) == ["student_temperature"]


@pytest.mark.parametrize(
    "name, text, read",
    [
        ("batch_size", "64", 64),
        ("batch_size", "64.0", 64),
        ("batch_size", "1e2", 100),
        ("batch_size", "2.5", None),
        ("lr", "3e-4", 3e-4),
        ("lr", "fast", None),
        ("subset", "100", 100),
    ],
)
def test_the_command_line_and_a_yaml_file_read_an_option_the_same_way(tmp_path, capsys, name, text, read):
    path = tmp_path / "c.yaml"
    path.write_text(f"{name}: {text}\n")
    command = ["train", "--preset", "smoke", f"--{name.replace('_', '-')}", text]
    if read is not None:
        given = config_from_args(build_parser().parse_args(command))
        assert getattr(resolve("smoke", str(path)), name) == getattr(given, name) == read
        return
    with pytest.raises(UserError, match=f"'{name}' must be"):
        resolve("smoke", str(path))
    with pytest.raises(SystemExit) as refused:
        main(command)
    error = capsys.readouterr().err
    assert refused.value.code == 2 and error.count("\n") == 1 and f"--{name.replace('_', '-')}: must be" in error
