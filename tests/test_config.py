import pytest
import yaml

from adafilter_lib.core.config import RunConfig, load_config, to_dict
from adafilter_lib.core.errors import KitError


def test_defaults_validate_and_round_trip_through_yaml(tmp_path):
    cfg = load_config()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_config(path) == cfg == RunConfig()


def test_overrides_apply_in_order_with_yaml_typing(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.5\ndata:\n  n_per_class: 7\n")
    cfg = load_config(path, ["optim.lr=0.02", "optim.epochs=3", "data.n_per_class=null", "method.l2sp.alpha=1"])
    assert cfg.optim.lr == 0.02 and cfg.optim.epochs == 3 and cfg.data.n_per_class is None
    assert cfg.method.l2sp.alpha == 1.0 and isinstance(cfg.method.l2sp.alpha, float)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("optim.lrr=0.1", "unknown config key 'optim.lrr'"),
        ("optim.lr=-1", "optim.lr and optim.head_lr must be positive"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("optim.optimizer=adam", "optim.optimizer must be one of sgd, adamw; got 'adam'"),
        ("method.adafilter.gate_optimizer=adam", "method.adafilter.gate_optimizer must be sgd or adamw"),
        ("optim.epochs=two", "optim.epochs' must be int"),
        ("data.resolution=8", "data.resolution must be at least 16"),
        ("optim", "not of the form key=value"),
    ],
)
def test_invalid_values_give_one_line_errors(override, fragment):
    with pytest.raises(KitError) as err:
        load_config(None, [override])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_missing_and_broken_config_files(tmp_path):
    with pytest.raises(KitError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(KitError, match="not valid YAML"):
        load_config(bad)


def test_run_name_is_a_safe_slug():
    cfg = load_config(None, ["data.dataset=folder:/some/where", "method.name=l2sp", "seed=3"])
    assert cfg.resolved_run_name() == "folder-_some_where__l2sp__efficientnet_lite0__s3"


def test_version_and_program_name(capsys, monkeypatch):
    import adafilter_lib
    from adafilter_lib.cli import app as cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"python -m adafilter_lib {adafilter_lib.__version__}"
    monkeypatch.setattr("sys.argv", ["/usr/local/bin/adafilter", "--help"])
    assert cli.build_parser().format_help().startswith("usage: adafilter ")


def test_config_file_errors_are_one_line_with_line_and_column(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- data\n- model\n")
    with pytest.raises(KitError, match="must hold a mapping of sections"):
        load_config(listed, ["optim.lr=0.1"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("data:\n  dataset: digits\n  resolution: [64\n")
    with pytest.raises(KitError, match=r"is not valid YAML \(line \d+, column \d+: ") as excinfo:
        load_config(broken)
    assert "\n" not in str(excinfo.value)


def test_device_cuda_without_a_gpu_and_runs_folder_that_is_a_file(tmp_path, capsys, monkeypatch):
    import torch

    from adafilter_lib.cli import app as cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["train", "--dataset", "digits", "--set", "device=cuda", "--runs", str(tmp_path)]) == 2
    assert "device=cuda but no CUDA GPU" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert cli.main(["train", "--dataset", "digits", "--runs", str(tmp_path / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_ctrl_c_says_how_to_resume(capsys, monkeypatch):
    from adafilter_lib.cli import app as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "list", interrupted)
    assert cli.main(["list"]) == 130
    assert "--resume" in capsys.readouterr().err


def test_every_named_option_is_checked_against_the_one_list_of_its_choices():
    from adafilter_lib.adafilter import gate_net, layers
    from adafilter_lib.core.method_config import ADAFILTER_CHOICES

    assert layers.BN_PRETRAINED_MODES is ADAFILTER_CHOICES["bn_pretrained"]
    assert gate_net.EVAL_MODES is ADAFILTER_CHOICES["eval_gates"] and gate_net.BINARIZE_MODES is ADAFILTER_CHOICES["binarize"]
    for option, valid in ADAFILTER_CHOICES.items():
        load_config(None, [f"method.adafilter.{option}={valid[-1]}"])  # every listed choice is accepted
        with pytest.raises(KitError, match=f"method.adafilter.{option} must be one of {', '.join(valid)}; got 'nope'"):
            load_config(None, [f"method.adafilter.{option}=nope"])
