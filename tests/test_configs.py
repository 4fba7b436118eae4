"""The configs shipped inside the package: `--config NAME` from any directory, paths, --list-configs, bad names;
the defaults a config leaves to be derived (training length, evaluation interval)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from cli_helpers import assert_one_line_error, invoke

from robustkit import checkpoint
from robustkit.config import CONFIG_DIR, load_config_file

REPO = Path(__file__).resolve().parents[1]
NAMES = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _yaml(name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())


def test_the_configs_live_inside_the_package():
    assert CONFIG_DIR == REPO / "robustkit" / "configs"
    assert len(NAMES) == 27 and "cifar10_250_gradaug_semi" in NAMES


def test_a_name_finds_the_shipped_config_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    for spec in ("cifar10_250_gradaug_semi", "cifar10_250_gradaug_semi.yaml", "cifar10_1000_cutmix_p0.5"):
        name = spec.removesuffix(".yaml")
        assert load_config_file(spec) == _yaml(name), spec
    # end to end: the name's values reach the run, flags still override them
    res = invoke("train", "--config", "cifar10_250_baseline", "--dataset", "digits", "--arch", "wrn-10-1", "--steps", "2",
                 "--batch-size", "8", "--eval-limit", "20", "--out", tmp_path / "r", "--no-progress")
    assert res.exit_code == 0, res.output
    saved = checkpoint.read(tmp_path / "r")["config"]
    assert (saved["labels"], saved["method"], saved["lr"], saved["nesterov"]) == (250, "baseline", 0.1, True)
    assert (saved["dataset"], saved["arch"]) == ("digits", "wrn-10-1")


def test_a_path_still_works_and_wins_over_a_name(tmp_path, monkeypatch):
    # the checkout's configs/ path (a link to robustkit/configs) keeps working from the repository root
    monkeypatch.chdir(REPO)
    assert load_config_file("configs/cifar10_250_gradaug_semi.yaml") == _yaml("cifar10_250_gradaug_semi")
    # a user's file, relative or absolute, is read even where its name is a shipped config's
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine" / "cifar10_250_baseline.yaml"
    mine.parent.mkdir()
    mine.write_text("dataset: digits\nlabels: 100\nmethod: gradaug\n")
    expected = {"dataset": "digits", "labels": 100, "method": "gradaug"}
    assert load_config_file("mine/cifar10_250_baseline.yaml") == expected
    assert load_config_file(mine) == expected
    (tmp_path / "cifar10_250_baseline.yaml").write_text("dataset: digits\nlabels: 50\n")
    assert load_config_file("cifar10_250_baseline.yaml") == {"dataset": "digits", "labels": 50}


def test_list_configs_names_each_with_method_labels_and_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke("train", "--list-configs")
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    rows = [line for line in lines if re.match(r"^(cifar10|stl10)_", line)]
    assert sorted(r.split()[0] for r in rows) == NAMES  # every shipped config, once
    for row in rows:
        name, description = row.split(maxsplit=1)
        dataset, labels, method = re.fullmatch(r"(cifar10|stl10)_(\d+)_([\w.]+)", name).groups()
        data = _yaml(name)
        assert (data["dataset"], data["labels"]) == (dataset, int(labels))  # the file is what its name says
        assert description == f"{method.replace('_', '-')}, {labels} labels, {dataset}", row
    assert lines[-1].startswith("use one: robustkit train --config NAME")
    assert not (tmp_path / "runs").exists()  # listing trains nothing


def test_a_bad_name_is_one_line_listing_the_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke("train", "--config", "cifar10_250_gradaug_semy", "--out", tmp_path / "r")
    assert_one_line_error(res, "cifar10_250_gradaug_semy", "does not exist", "--list-configs", *NAMES)
    assert not (tmp_path / "r").exists()
    # the old checkout path, from a directory without it: one line that gives the name to use instead
    res = invoke("train", "--config", "configs/cifar10_250_gradaug_semi.yaml", "--out", tmp_path / "r")
    assert_one_line_error(res, "does not exist", "--config cifar10_250_gradaug_semi")


# ----------------------------------------------------------------------- values of the wrong type
import pytest  # noqa: E402


@pytest.mark.parametrize("text,fragments", [
    ("lr: fast\n", ["lr must be a number", "'fast'"]),
    ("steps: abc\n", ["steps must be a whole number"]),
    ("steps: 2.5\n", ["steps must be a whole number", "2.5"]),
    ("labels: abc\n", ["labels must be a whole number or 'all'"]),
    ("seed: x\n", ["seed must be a whole number"]),
    ("semi: maybe\n", ["semi must be true or false"]),
    ("resolutions: [32, abc]\n", ["resolutions must be a list of whole numbers"]),
    ("extra: 5\n", ["extra must be a mapping"]),
    ("dataset: 12\n", ["dataset must be a string"]),
    ("momentum: .nan\n", ["--momentum must be in [0, 1)"]),
    ("weight_decay: -1\n", ["--weight-decay must be a finite number >= 0"]),
    ("lr: .inf\n", ["--lr must be a finite number > 0"]),
])
def test_config_values_of_the_wrong_type_are_one_line(text, fragments, tmp_path, monkeypatch):
    """Before: a TypeError deep in training, or a run saved with seed: x that the report could not read."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(text)
    steps = [] if text.startswith("steps") else ["--steps", "2"]   # a flag would override the file's steps
    res = invoke("train", "--config", "c.yaml", "--dataset", "digits", "--arch", "wrn-10-1", *steps, "--device", "cpu",
                 "--out", tmp_path / "run", "--no-progress")
    assert_one_line_error(res, *fragments)
    assert not (tmp_path / "run").exists()


def test_config_values_written_loosely_are_read_as_meant(tmp_path):
    """YAML reads 5e-4 (no dot) as a string, and "all" is what the CLI's --labels takes."""
    from robustkit.config import TrainConfig

    (tmp_path / "c.yaml").write_text("weight_decay: 5e-4\nlabels: all\nresolutions: 32\nsteps: 100.0\n")
    cfg = TrainConfig.from_dict(load_config_file(tmp_path / "c.yaml"))
    assert (cfg.weight_decay, cfg.labels, cfg.resolutions, cfg.steps) == (5e-4, None, [32], 100)
    assert TrainConfig.from_dict({"resolutions": "32,28"}).resolutions == [32, 28]


def test_a_config_that_is_not_text_is_one_line(tmp_path):
    (tmp_path / "c.yaml").write_bytes(b"\xff\xfe\x00lr: 1\n")
    assert_one_line_error(invoke("train", "--config", tmp_path / "c.yaml", "--device", "cpu"), "not UTF-8")


def test_training_flags_torch_would_reject_are_one_line(tmp_path):
    common = ["--dataset", "digits", "--device", "cpu", "--steps", "2", "--no-progress", "--out", tmp_path / "r"]
    assert_one_line_error(invoke("train", *common, "--arch", "wrn-10-0"), "widen factor")
    assert_one_line_error(invoke("train", *common, "--arch", "wrn-10-1", "--resolutions", "10000"),
                          "at most twice", "32 px")
    assert_one_line_error(invoke("train", *common, "--arch", "wrn-10-1", "--weight-decay", "-1"), "--weight-decay")
    assert_one_line_error(invoke("train", *common, "--arch", "wrn-10-1", "--momentum", "nan"), "--momentum")


def test_gradaug_semi_in_a_config_file_is_gradaug_with_semi(tmp_path):
    from robustkit.config import merge

    (tmp_path / "c.yaml").write_text("method: gradaug-semi\nsubnets: 2\n")
    cfg = merge(load_config_file(tmp_path / "c.yaml"), {})
    assert (cfg.method, cfg.semi, cfg.subnets) == ("gradaug", True, 2)
    assert (merge(None, {"method": "gradaug-semi"}).method, merge(None, {"method": "gradaug-semi"}).semi) == ("gradaug", True)
    res = invoke("train", "--config", tmp_path / "c.yaml", "--no-semi", "--device", "cpu", "--out", tmp_path / "r")
    assert_one_line_error(res, "gradaug-semi is GradAug with --semi")


@pytest.mark.parametrize("flags,fragments", [
    (["--method", "baseline", "--subnets", "2"], ["--subnets is an option of --method gradaug / gradaug-semi",
                                                  "baseline, does not use it"]),
    (["--method", "cutmix", "--resolutions", "32,24"], ["--resolutions", "method, cutmix, does not use it"]),
    (["--method", "gradaug", "--unlabeled-ratio", "3"], ["--unlabeled-ratio is an option of --method gradaug-semi / "
                                                         "mean-teacher", "gradaug, does not use it"]),
    (["--method", "gradaug-semi", "--eval-model", "student"], ["--eval-model", "gradaug-semi, does not use it"]),
    (["--method", "shakedrop", "--consistency", "5"], ["--consistency is an option of --method mean-teacher"]),
])
def test_a_flag_the_method_does_not_read_is_refused(flags, fragments, tmp_path):
    """Before: accepted, recorded in the run's config.yaml, and without any effect."""
    res = invoke("train", "--dataset", "digits", "--arch", "wrn-10-1", "--steps", "2", "--device", "cpu",
                 "--no-progress", "--out", tmp_path / "r", *flags)
    assert_one_line_error(res, *fragments)
    assert not (tmp_path / "r").exists()


def test_a_config_files_options_for_another_method_are_not_refused(tmp_path):
    """`--config cifar10_250_gradaug --method baseline`: the flag changes the file's method; the file's GradAug
    options are left unused (a config file is a set of defaults), not an error."""
    from robustkit.config import merge

    cfg = merge(load_config_file("cifar10_250_gradaug"), {"method": "baseline"})
    assert cfg.method == "baseline"
    for flags in ({"method": "gradaug", "subnets": 2}, {"method": "gradaug-semi", "unlabeled_ratio": 3},
                  {"method": "mean-teacher", "unlabeled_ratio": 3, "consistency": 5.0, "eval_model": "student"}):
        merge(None, flags)   # each method's own options are accepted


def _resolved(**kw):
    from robustkit.config import TrainConfig, resolve

    n_labeled = kw.get("labels") or 50_000
    return resolve(TrainConfig(**kw), n_labeled=n_labeled, n_train=50_000, image_size=32, flip_default=True)


def test_default_length_and_eval_interval_are_the_readmes():
    """README, options table: "10k steps up to 1000 labels, 20k up to 4000, else 100 epochs (at least 1000 steps);
    epochs are passes over the labeled subset" and --eval-every "(steps/10)". The step counts of 100 (or 3) epochs
    are worked out by hand; a partial last batch counts as a step (6265.6 -> 6266, 11.7 -> 12)."""
    assert _resolved(labels=250).steps == 10_000
    assert _resolved(labels=1000).steps == 10_000
    assert _resolved(labels=1010).steps == 20_000
    assert _resolved(labels=4000).steps == 20_000
    assert _resolved(labels=4010, batch_size=64).steps == 6266            # 100 x 4010 / 64 = 6265.6
    assert _resolved(labels=None, batch_size=64).steps == 78_125          # all 50,000: 100 x 50,000 / 64
    assert _resolved(labels=None, batch_size=10_000).steps == 1000        # 500 steps of 100 epochs: at least 1000
    assert _resolved(labels=250, epochs=3.0, batch_size=64).steps == 12   # 3 x 250 / 64 = 11.7
    assert _resolved(labels=250).eval_every == 1000
    assert _resolved(labels=250, steps=1005).eval_every == 100
    assert _resolved(labels=250, steps=5).eval_every == 1                  # never 0
