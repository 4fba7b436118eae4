"""bench/bench_imagenet.py on the CPU at a tiny size: the extrapolation (one-off + image-cells / steady rate) and
its parts, read back from the JSON, with the target judged as a CUDA run would judge it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import load_script

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench_script():
    return load_script(BENCH / "bench_imagenet.py")


def test_tiny_cpu_run_extrapolates_from_steady_rate(bench_script, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_script, "not_judged", lambda device, images, names: None)   # judge it, as on CUDA
    out = tmp_path / "imagenet.json"
    threads = torch.get_num_threads()
    try:   # one of torchvision's smallest classifiers, one thread: seconds even on a busy machine
        rc = bench_script.main(["--device", "cpu", "--threads", "1", "--arch", "mobilenet_v3_small", "--images", "8",
                                "--batch-size", "4", "--corruptions", "gaussian_noise,contrast", "--severities", "1",
                                "--no-reference", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    printed = capsys.readouterr().out
    assert "one-off costs, measured" in printed and "check: one-off" in printed
    data = json.loads(out.read_text())
    fig = data["extrapolation"]
    assert fig["judged"] and fig["image_cells"] == 50_000 * 19 * 5
    assert fig["one_off_s"] >= 0 and fig["per_run_s"] > 0
    assert fig["one_off_s"] == pytest.approx(fig["per_run_s"] + fig["first_time_s"])
    for rate in ("steady_images_per_s", "mean_images_per_s", "model_only_images_per_s"):
        assert fig[rate] > 0, rate
    assert fig["minutes"] == pytest.approx((fig["one_off_s"] + fig["image_cells"] / fig["steady_images_per_s"]) / 60)
    assert fig["minutes_at_mean_rate"] == pytest.approx(fig["image_cells"] / fig["mean_images_per_s"] / 60)
    assert fig["first_time_s"] == pytest.approx(max(0.0, fig["cold_run_s"] - fig["warm_run_s"]))
    assert fig["predicted_cold_run_s"] == pytest.approx(fig["one_off_s"] + 8 * 2 / fig["steady_images_per_s"])
    (goal,) = data["targets"]
    assert goal["name"] == bench_script.TARGET_NAME and goal["unit"] == "min"
    assert goal["measured"] == pytest.approx(fig["minutes"])


def test_cpu_run_is_not_judged(bench_script):
    assert bench_script.not_judged(torch.device("cpu"), 50_000, ["gaussian_noise"]) == "on CUDA"
    assert "all 19 corruptions" in bench_script.not_judged(torch.device("cuda"), 5_000, ["gaussian_noise"])


def test_one_cell_has_no_steady_rate(bench_script, capsys):
    assert bench_script.main(["--device", "cpu", "--corruptions", "contrast", "--severities", "3"]) == 2
    assert "at least 2 cells" in capsys.readouterr().err


def test_compile_run_times_both_models_and_names_its_target(bench_script, tmp_path, capsys, monkeypatch):
    """--compile: robustkit corrupt --compile in the job, the compiled ceiling beside the uncompiled one in the
    same run, and a target of its own (compilation itself is a recording pass-through here, so the test is fast)."""
    wrapped = []

    def passthrough(model, graphs):
        wrapped.append(type(model).__name__)
        return model

    monkeypatch.setattr("robustkit.compiling.compile_fixed_shapes", passthrough)
    monkeypatch.setattr(bench_script, "not_judged", lambda device, images, names: None)
    out = tmp_path / "imagenet.json"
    threads = torch.get_num_threads()
    try:
        rc = bench_script.main(["--device", "cpu", "--threads", "1", "--arch", "mobilenet_v3_small", "--images", "4",
                                "--batch-size", "4", "--corruptions", "gaussian_noise,contrast", "--severities", "1",
                                "--no-reference", "--compile", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    assert len(wrapped) == 4   # the cold, warm and cell-less jobs' models, and the ceiling's
    assert "not compiled" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["extrapolation"]["model_only_uncompiled_images_per_s"] > 0
    (goal,) = data["targets"]
    assert goal["name"] == bench_script.TARGET_NAME + ", --compile"


def test_the_target_is_written_before_the_reference_runs(bench_script, tmp_path, monkeypatch):
    """The DataLoader + imagecorruptions reference is the slow part of the run (on the H100 a time limit stopped
    the whole check inside it): the target and its figures are on disk before it starts. Here the reference is
    "stopped" by an exception; the JSON holds the judged target, without a reference entry."""
    monkeypatch.setattr(bench_script, "not_judged", lambda device, images, names: None)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt("time limit")

    monkeypatch.setattr(bench_script, "reference", stopped)
    out = tmp_path / "imagenet.json"
    threads = torch.get_num_threads()
    try:
        with pytest.raises(KeyboardInterrupt):
            bench_script.main(["--device", "cpu", "--threads", "1", "--arch", "mobilenet_v3_small", "--images", "4",
                               "--batch-size", "4", "--corruptions", "gaussian_noise,contrast", "--severities", "1",
                               "--ref-images", "4", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    data = json.loads(out.read_text())
    (goal,) = data["targets"]
    assert goal["name"] == bench_script.TARGET_NAME and goal["measured"] > 0
    assert "reference" not in data and data["extrapolation"]["judged"]


def test_reference_runs_every_cell_through_one_loader(bench_script, tmp_path, monkeypatch):
    """The DataLoader + imagecorruptions reference: item i is image i % n of cell i // n (every cell, every image,
    each once), through one loader whose start-up is paid once; the per-corruption times are the steady-state
    time split over the images' corruptions, and the steady-state figure is all the cells at the rate after
    the first batch."""
    folder = bench_script.make_folder(tmp_path / "folder", 3, classes=2)
    files = sorted(str(p) for p in (folder / "val").rglob("*.JPEG"))
    assert len(files) == 3
    cells = [("gaussian_noise", 1), ("gaussian_noise", 2), ("contrast", 1)]
    ds = bench_script._RefDataset(files, [5, 6, 7], cells)
    asked = []

    class Recorder:   # stands in for imagecorruptions: records what each item asked for
        @staticmethod
        def corrupt(img, corruption_name, severity):
            asked.append((corruption_name, severity))
            return img.copy()

    ds.ic = Recorder()
    assert len(ds) == 9
    items = [ds[i] for i in range(len(ds))]
    assert [cell for _, _, cell in items] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [label for _, label, _ in items] == [5, 6, 7] * 3
    assert asked == [c for c in cells for _ in files]
    assert all(x.shape == (3, 224, 224) for x, _, _ in items)

    made = []
    real_loader = torch.utils.data.DataLoader

    def loader(*a, **k):   # count the loaders: one for all the cells, not one per cell
        made.append(k)
        return real_loader(*a, **k)

    monkeypatch.setattr(torch.utils.data, "DataLoader", loader)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2))
    total, steady, per = bench_script.reference(model, folder, ["gaussian_noise", "contrast"], [1, 2],
                                                torch.device("cpu"), workers=0, batch=2, n_images=3)
    assert len(made) == 1 and made[0]["batch_size"] == 2
    assert set(per) == {"gaussian_noise", "contrast"} and all(v > 0 for v in per.values())
    # 12 image-cells in batches of 2: the steady part is the 5 batches after the first (10 images), and the
    # steady figure scales its time to all 12
    assert steady == pytest.approx(sum(per.values()) * 12 / 10, rel=1e-6)
    assert 0 < sum(per.values()) < total


def test_the_ceiling_is_the_network_as_corrupt_runs_it(bench_script, tmp_path, capsys, monkeypatch):
    """Where the device's defaults fold and fuse (CUDA), the model-only ceiling times the folded + fused network, the
    one corrupt evaluates, and the plain network beside it (here the CPU's defaults are patched to CUDA's)."""
    import robustkit.jobs as jobs
    from robustkit.models.fuse import FusedConvReLU

    monkeypatch.setattr(jobs, "EVAL_SWITCH_DEFAULTS", {"cpu": {"fuse_conv": True}})
    monkeypatch.setattr(bench_script, "not_judged", lambda device, images, names: None)
    timed = []

    def ceiling(model, batch, device, amp, channels_last, images):
        timed.append(any(isinstance(m, FusedConvReLU) for m in model.modules()))
        return 100.0 * len(timed)

    monkeypatch.setattr(bench_script, "model_ceiling", ceiling)
    out = tmp_path / "imagenet.json"
    threads = torch.get_num_threads()
    try:
        rc = bench_script.main(["--device", "cpu", "--threads", "1", "--arch", "mobilenet_v3_small", "--images", "8",
                                "--batch-size", "4", "--corruptions", "gaussian_noise,contrast", "--severities", "1",
                                "--no-reference", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0 and timed == [False, True]   # the plain network first, then the one corrupt runs
    printed = capsys.readouterr().out
    assert "folded + fused), ceiling" in printed and "fused 2.00x this" in printed
    fig = json.loads(out.read_text())["extrapolation"]
    assert (fig["model_only_images_per_s"], fig["model_only_plain_images_per_s"]) == (200.0, 100.0)


def test_the_jpeg_folder_is_made_once_and_never_replaces_other_files(bench_script, tmp_path, capsys):
    """--make-folder-only makes the JPEGs (gpu_check.sh: while the CUDA tests run), a later run finds them; a
    folder left half-made (no completion marker) is made again; a folder with other files is refused, kept."""
    root = tmp_path / "imgs"
    assert bench_script.main(["--make-folder-only", "--folder", str(root), "--images", "6"]) == 0
    assert "made 6 JPEGs" in capsys.readouterr().out
    files = sorted(p.relative_to(root) for p in root.rglob("*.JPEG"))
    assert len(files) == 6 and (root / "val").is_dir()
    stamp = (root / files[0]).stat().st_mtime_ns
    assert bench_script.jpeg_folder(root, 6, 6) is False   # found: not made again
    assert (root / files[0]).stat().st_mtime_ns == stamp
    (root / ".made-6-6").unlink()                            # as if stopped before its end
    (root / "val" / "stray.txt").write_text("left over")
    assert bench_script.jpeg_folder(root, 6, 6) is True
    assert sorted(p.relative_to(root) for p in root.rglob("*.JPEG")) == files and not (root / "val" / "stray.txt").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    assert bench_script.main(["--make-folder-only", "--folder", str(mine), "--images", "6"]) == 2
    assert "holds files this script did not make" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "keep me"
    assert bench_script.main(["--make-folder-only", "--images", "6"]) == 2
    assert "needs --folder" in capsys.readouterr().err
