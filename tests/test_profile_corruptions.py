"""bench/profile_corruptions.py on the CPU: one corruption and one eval cell at a tiny size, read back from its
JSON; and the flags bench/gpu_check.sh's quick-profile stage passes are ones the script accepts."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from conftest import load_script

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def profile_script():
    return load_script(BENCH / "profile_corruptions.py")


def test_cpu_run_writes_sane_json(profile_script, tmp_path, capsys):
    out = tmp_path / "profile.json"
    rc = profile_script.main(["--device", "cpu", "--threads", "1", "--size", "32", "--batch-size", "4",
                              "--batches", "2", "--corruptions", "spatter", "--eval-cell", "--cell-corruptions",
                              "zoom_blur", "--arch", "resnet18", "--images", "8", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "spatter" in printed and "(d) cell step" in printed
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["batch_size"] == 4 and data["size"] == 32
    (row,) = data["corruptions"]
    assert row["name"] == "spatter" and row["severity"] == 3
    for key in ("ms", "images_per_s", "host_ms", "compute_ms", "batch_ms"):
        assert row[key] > 0, key
    assert row["dispatch_ms"] >= 0
    assert row["compute_ms"] + row["dispatch_ms"] == pytest.approx(row["ms"])
    assert row["launches"] == row["dispatched_ops"] > 0 and row["aten_ops_all"] >= row["aten_ops_top"] > 0
    assert row["syncs"] >= 1        # canny's hysteresis asks whether it has converged
    assert row["float64_ops"] == sum(row["float64_op_names"].values())
    assert row["bound"] in ("ops", "python/dispatch")
    assert 0 < len(row["top_ops"]) <= 8 and all(op["ms"] > 0 and op["calls"] > 0 for op in row["top_ops"])
    assert sum(op["share"] for op in row["top_ops"]) + row["other_share"] == pytest.approx(1.0)
    assert all(0 < op["share"] <= 1 for op in row["top_ops"])

    cell = data["eval_cell"]
    assert cell["arch"] == "resnet18" and cell["batches"] == 2 and not cell["amp"]
    assert cell["cell_ms"] > 0 and cell["cell_images_per_s"] > 0 and cell["model_alone_images_per_s"] > 0
    assert all(cell["parts_ms"][k] > 0 for k in ("corruption", "convert", "network"))
    assert sum(cell["shares"].values()) == pytest.approx(1.0)
    assert cell["parts_ms"]["convert"] == pytest.approx(sum(cell["convert_detail_ms"].values()))
    (per,) = cell["per_corruption"]
    assert per["name"] == "zoom_blur" and per["first_call_ms"] > 0 and per["corruption_ms"] > 0


def test_cifar_cell_runs_robustkits_own_network(profile_script, tmp_path, capsys):
    """--arch wrn-D-K: the cell is a CIFAR-10-C one (robustkit's WideResNet, 10 classes), not torchvision's."""
    out = tmp_path / "profile.json"
    rc = profile_script.main(["--device", "cpu", "--threads", "1", "--size", "32", "--batch-size", "4",
                              "--batches", "1", "--corruptions", "brightness", "--eval-cell", "--cell-corruptions",
                              "contrast", "--arch", "wrn-10-1", "--images", "8", "--json", str(out)])
    assert rc == 0
    assert "CIFAR-10-C cell: wrn-10-1" in capsys.readouterr().out
    cell = json.loads(out.read_text())["eval_cell"]
    assert cell["arch"] == "wrn-10-1" and cell["cell_ms"] > 0 and cell["parts_ms"]["network"] > 0
    assert profile_script.robustkit_arch("wrn-28-2") and not profile_script.robustkit_arch("resnet50")


def test_network_variants_time_the_cells_network_and_check_its_predictions(profile_script, tmp_path, capsys):
    """--network-variants: each variant of the network step is timed with its one-off, counts the same correct
    predictions as the default step over the same batches (random weights), and a CUDA-only one is a row saying
    so on the CPU; an unknown part is one line before any work."""
    import torch

    torch.manual_seed(2)   # the network's random weights: its first batch has a right prediction (a count that
    #                        kept the warm-up call's would differ)
    out = tmp_path / "profile.json"
    rc = profile_script.main(["--device", "cpu", "--threads", "1", "--size", "32", "--batch-size", "8",
                              "--batches", "1", "--corruptions", "brightness", "--eval-cell", "--cell-corruptions",
                              "contrast", "--arch", "wrn-10-1", "--images", "20", "--network-variants",
                              "tuned,graphs,folded+tuned,fused",
                              "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "skipped: CUDA graphs need CUDA" in printed and "vs default" in printed
    cell = json.loads(out.read_text())["eval_cell"]
    tuned, graphs, folded, fused = cell["network_variants"]
    assert tuned["variant"] == "tuned" and tuned["ms"] > 0 and tuned["one_off_s"] >= 0 and tuned["batch"] == 8
    assert tuned["vs_default"] == pytest.approx(cell["network_ms"] / tuned["ms"])
    assert tuned["correct"] == tuned["reference_correct"] and 0 <= tuned["correct"] <= 16   # two full batches of 8
    assert graphs == {"variant": "graphs", "skipped": "CUDA graphs need CUDA"}
    assert folded["batch_norms_folded"] == 3 and tuned["batch_norms_folded"] is None   # wrn-10-1: a bn2 per block
    assert folded["correct"] == folded["reference_correct"] == tuned["reference_correct"]
    # fused folds first (as corrupt --fuse-conv), then fuses wrn-10-1's 3 conv1 -> relu (off CUDA: the same ops)
    assert (fused["batch_norms_folded"], fused["convolutions_fused"], fused["fusion_refused"]) == (3, 3, None)
    assert fused["correct"] == fused["reference_correct"] and folded["convolutions_fused"] is None
    assert profile_script.main(["--device", "cpu", "--eval-cell", "--network-variants", "tuned+fast"]) == 2
    assert "unknown part 'fast'" in capsys.readouterr().err


def test_unknown_corruption_is_one_line(profile_script, capsys):
    assert profile_script.main(["--device", "cpu", "--corruptions", "fizz"]) == 2
    assert "unknown corruption 'fizz'" in capsys.readouterr().err


def test_gpu_check_stage_flags_parse(profile_script):
    """Both quick-profile stages pass flags the script accepts; the CIFAR-10-C one times the network variants."""
    script = (BENCH / "gpu_check.sh").read_text().replace("\\\n", " ")
    start = script.index("\n    quick-profile)")   # the stage's case label, not a mention in the comments
    stage = script[start:script.index(";;", start)]
    commands = re.findall(r"\"\$PY\" bench/profile_corruptions.py (.*)", stage)
    assert len(commands) == 2, "gpu_check.sh's quick-profile should run bench/profile_corruptions.py twice"
    parsed = [profile_script.build_parser().parse_args(shlex.split(c.replace("$TARGETS", "/tmp/t"))) for c in commands]
    assert all(a.device == "cuda" and a.eval_cell for a in parsed)
    assert [a.json for a in parsed] == ["/tmp/t/profile.json", "/tmp/t/profile-cifar.json"]
    assert profile_script.parse_network_variants(parsed[1].network_variants), "the CIFAR cell's variants are unset"


def test_traffic_model_counts_bytes_read_and_written(profile_script):
    """The memory-traffic model on ops whose bytes are known: each tensor argument read once, each result
    written once; out= and copy_/fill_/random targets only written; a broadcast counted once; a gather's
    source read as much as it gathers; views free."""
    import torch

    x = torch.rand(10, 20)                      # 800 bytes
    y = torch.empty(10, 20)
    idx = torch.zeros(5, dtype=torch.long)      # 40 bytes

    def traffic(step):
        return profile_script.dispatched_ops(step, torch.device("cpu"))[2]

    assert traffic(lambda: x + 1) == 800 + 800
    assert traffic(lambda: x.double()) == 800 + 1600
    assert traffic(lambda: torch.add(x, x, out=y)) == 800 + 800 + 800
    assert traffic(lambda: y.floor_()) == 800 + 800
    assert traffic(lambda: y.copy_(x)) == 800 + 800
    assert traffic(lambda: y.uniform_()) == 800
    assert traffic(lambda: x + torch.ones(20).expand(10, 20)) == 800 + 80 + 800 + 80   # ones: 80 written
    assert traffic(lambda: x[:, :5].view(-1, 5).t()) == 0
    assert traffic(lambda: x.view(200).reshape(20, 10).clone()) == 800 + 800
    assert traffic(lambda: x.index_select(0, idx)) == 40 + 2 * 5 * 20 * 4
    assert traffic(lambda: x.index_select(0, idx)) == traffic(lambda: x[:5].index_select(0, idx))


def test_the_cell_runs_the_network_as_corrupt_does_and_the_variants_start_from_the_plain_one(profile_script, tmp_path,
                                                                                           monkeypatch):
    """Where the device's defaults fold and fuse (CUDA; here the CPU's are patched to CUDA's), the cell's network is
    the folded + fused one that corrupt evaluates, and the label says so; ``plain`` and the other variants are built
    from the plain network."""
    import robustkit.evaluate as evaluate
    import robustkit.jobs as jobs
    from robustkit.models.fuse import FusedConvReLU

    monkeypatch.setattr(jobs, "EVAL_SWITCH_DEFAULTS", {"cpu": {"fuse_conv": True}})
    seen, real = [], evaluate.corruption_accuracies

    def recording(models, *a, **kw):
        seen.append(any(isinstance(m, FusedConvReLU) for m in models[0].modules()))
        return real(models, *a, **kw)

    monkeypatch.setattr(evaluate, "corruption_accuracies", recording)
    out = tmp_path / "profile.json"
    rc = profile_script.main(["--device", "cpu", "--threads", "1", "--size", "32", "--batch-size", "8",
                              "--batches", "1", "--corruptions", "brightness", "--eval-cell", "--cell-corruptions",
                              "contrast", "--arch", "wrn-10-1", "--images", "16", "--network-variants", "plain,fused",
                              "--json", str(out)])
    assert rc == 0 and seen and all(seen)
    cell = json.loads(out.read_text())["eval_cell"]
    assert (cell["default_switches"], cell["default_convolutions_fused"]) == ("folded + fused", 3)
    plain, fused = cell["network_variants"]
    assert (plain["variant"], plain["batch_norms_folded"], plain["convolutions_fused"]) == ("plain", None, None)
    assert (fused["batch_norms_folded"], fused["convolutions_fused"]) == (3, 3)   # from the plain network again
    assert plain["ms"] > 0 and plain["reference_correct"] == fused["reference_correct"]
