"""notebooks/results.ipynb: executes top to bottom on real runs, and its tables and figures say the right thing.

The notebook runs in a Jupyter kernel started from *this* Python (``sys.executable -m ipykernel_launcher``):
the ``python3`` kernel spec installed in a virtual environment says plain ``python``, which resolves through
PATH and may be a different interpreter without robustkit. A kernel that cannot start fails the test with a
clear message instead of skipping it.

The notebook runs on hand-made run folders (tests/handmade.py: fixed eval JSON, no model trained here),
and its numbers are checked against values computed here straight from the eval JSONs with an independent
implementation of the same rules (not through ``robustkit.report``), via a probe cell appended to the
in-memory copy of the notebook.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import pytest

from handmade import notebook_runs

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "results.ipynb"
# Figures each tagged cell must draw with the handmade_runs fixture (2 runs, one of them a baseline).
EXPECTED_FIGURES = {"fig-curves": 1, "fig-fgsm": 1, "fig-heatmaps": 1, "fig-methods": 1, "ce": 1}
PROBE = """
import json, sys
print(json.dumps({
    "python": sys.executable, "summary": summary, "method_means": method_means, "ce_rows": ce_rows,
    "fgsm_lines": len(fig_fgsm.axes[0].lines), "heatmap_axes": len(fig_heatmaps.axes),
}))
"""

try:
    import nbformat
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
except ImportError as exc:  # a missing dev dependency must not turn into a silent skip
    hint = "install the dev extras: pip install -e '.[dev]' (nbclient, nbformat, ipykernel)"
    raise ImportError(f"{exc}; {hint}") from exc


def _kernel_manager(spec_root: Path) -> KernelManager:
    """A KernelManager whose 'python3' kernel is this interpreter (a private kernel spec folder)."""
    spec_dir = spec_root / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "robustkit tests",
                                                      "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(spec_root)], ensure_native_kernel=False)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
    assert km.kernel_spec.argv[0] == sys.executable, km.kernel_spec.argv
    return km


def _execute(nb, cwd: Path, env: dict[str, str | None], spec_root: Path):
    """Run ``nb`` in place in a fresh kernel with working directory ``cwd`` and ``env`` applied (None unsets).

    A failing cell raises CellExecutionError (tests may expect one); a kernel that does not start fails.
    """
    client = NotebookClient(nb, timeout=120, kernel_name="python3", km=_kernel_manager(spec_root),
                            resources={"metadata": {"path": str(cwd)}})
    with pytest.MonkeyPatch.context() as mp:  # the kernel inherits os.environ when it is launched
        for key, value in env.items():
            if value is None:
                mp.delenv(key, raising=False)
            else:
                mp.setenv(key, value)
        try:
            client.execute()
        except CellExecutionError:
            raise
        except Exception as exc:  # noqa: BLE001 - kernel start / protocol failures
            pytest.fail(f"could not run the notebook in a kernel ({sys.executable} -m ipykernel_launcher): "
                        f"{type(exc).__name__}: {exc}; is ipykernel installed in this environment?")
    return nb


def _tagged(nb, tag: str):
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def _outputs(cell, mime: str) -> list[str]:
    return [o["data"][mime] for o in cell.get("outputs", []) if mime in o.get("data", {})]


def _stdout(cell) -> str:
    return "".join(o["text"] for o in cell.get("outputs", []) if o["output_type"] == "stream" and o["name"] == "stdout")


def _until(nb, tag: str):
    """A copy of ``nb`` holding the cells up to and including the one tagged ``tag``."""
    copy = nbformat.from_dict(json.loads(json.dumps(nb)))
    end = next(i for i, c in enumerate(copy.cells) if tag in c.get("metadata", {}).get("tags", []))
    copy.cells = copy.cells[: end + 1]
    return copy


def _read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


# ------------------------------------------------------------------------------------------------
# Values computed directly from the eval JSONs
# ------------------------------------------------------------------------------------------------
def _eval_json(run_dir: Path, kind: str) -> dict:
    return json.loads((run_dir / "eval" / f"{kind}.json").read_text())


def _cells(run_dir: Path) -> dict[str, dict[int, float]]:
    cells: dict[str, dict[int, float]] = {}
    for rec in _eval_json(run_dir, "corruptions")["results"]:
        cells.setdefault(rec["corruption"], {})[rec["severity"]] = rec["accuracy"]
    return cells


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def handmade_runs(tmp_path_factory) -> Path:
    """Two hand-made runs (baseline, gradaug) with fixed eval JSON; read-only by convention."""
    return notebook_runs(tmp_path_factory.mktemp("handmade") / "runs")


@pytest.fixture(scope="module")
def executed(handmade_runs, tmp_path_factory):
    """The notebook (plus a probe cell) executed on the handmade_runs fixture: (notebook, probe dict)."""
    nb = _read_notebook()
    probe = nbformat.v4.new_code_cell(PROBE.strip(), id="probe")
    probe.metadata["tags"] = ["probe"]
    nb.cells.append(probe)
    cwd = tmp_path_factory.mktemp("notebook_cwd")  # empty: no robustkit-demo* folder to fall back on
    env = {"ROBUSTKIT_RUNS": str(handmade_runs), "ROBUSTKIT_BASELINE": None}
    try:
        _execute(nb, cwd, env, tmp_path_factory.mktemp("kernels"))
    except CellExecutionError as exc:
        pytest.fail(f"a notebook cell failed:\n{exc}")
    return nb, json.loads(_stdout(nb.cells[-1]))


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------
def test_committed_notebook_is_valid_v4_without_outputs():
    nb = _read_notebook()
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"cell {cell.get('id')} has saved outputs"
    for tag in EXPECTED_FIGURES:
        _tagged(nb, tag)


def test_runs_top_to_bottom_in_this_python(executed):
    nb, probe = executed
    assert Path(probe["python"]).resolve() == Path(sys.executable).resolve()
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.execution_count is not None, f"cell {cell.get('id')} did not run"
            errors = [o for o in cell.outputs if o["output_type"] == "error"]
            assert not errors, f"cell {cell.get('id')}: {errors[0]['ename']}: {errors[0]['evalue']}"


def test_draws_every_figure_once(executed):
    nb, probe = executed
    for tag, count in EXPECTED_FIGURES.items():
        assert len(_outputs(_tagged(nb, tag), "image/png")) == count, tag
    total = sum(len(_outputs(c, "image/png")) for c in nb.cells if c.cell_type == "code")
    assert total == sum(EXPECTED_FIGURES.values())
    assert probe["fgsm_lines"] == 2                # one accuracy-vs-eps line per run
    assert probe["heatmap_axes"] == 3              # one heatmap per run + the shared colour bar


def test_prints_which_folder_it_loads(executed, handmade_runs):
    nb, _ = executed
    out = _stdout(_tagged(nb, "load"))
    assert f"Loading runs from {handmade_runs.resolve()} (from $ROBUSTKIT_RUNS)" in out
    assert "2 run(s)" in out
    assert "fgsm: 3 eps, n=100" in out and "corruptions: 6 cells (cifar-10-c), n=100" in out


def test_summary_table_matches_the_eval_json(executed, handmade_runs):
    nb, probe = executed
    table = _outputs(_tagged(nb, "summary"), "text/markdown")
    assert len(table) == 1
    rows = {row["run"]: row for row in probe["summary"]}
    assert set(rows) == {"baseline", "gradaug"}
    for name, row in rows.items():
        run_dir = handmade_runs / name
        clean = _eval_json(run_dir, "fgsm")["clean_accuracy"]
        accs = [a for sev in _cells(run_dir).values() for a in sev.values()]
        assert row["method"] == name and row["labels"] == 250 and row["seed"] == 0 and row["n"] == 100
        assert row["corruption_cells"] == len(accs) == 6
        assert row["clean_acc"] == pytest.approx(clean)
        assert row["mean_corruption_acc"] == pytest.approx(statistics.fmean(accs))
        final = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]["test_acc"]
        assert row["final_test_acc"] == pytest.approx(final)
        assert f"| {name} | {name} | 250 | 0 | {100 * clean:.1f} | {100 * statistics.fmean(accs):.1f} |" in table[0]


def test_method_means_and_corruption_errors_match_the_eval_json(executed, handmade_runs):
    nb, probe = executed
    cells = {name: _cells(handmade_runs / name) for name in ("baseline", "gradaug")}
    clean = {name: _eval_json(handmade_runs / name, "corruptions")["clean_accuracy"] for name in cells}
    for name, by_corruption in cells.items():
        means = probe["method_means"][name]
        assert means["clean"] == pytest.approx(clean[name])
        for corruption, sev in by_corruption.items():
            assert means[corruption] == pytest.approx(statistics.fmean(sev.values()))

    rows = {row["run"]: row for row in probe["ce_rows"]}
    assert {row["baseline"] for row in rows.values()} == {"baseline"}
    assert rows["baseline"]["mce"] == pytest.approx(1.0)
    g, b = cells["gradaug"], cells["baseline"]
    ce = {c: sum(1 - g[c][s] for s in b[c]) / sum(1 - b[c][s] for s in b[c]) for c in b}
    # Relative CE, the rule written out independently: the baseline's loss to a corruption, summed over
    # severities, must be at least one test image (1/n, less half an image of float slack), else that
    # corruption's relative CE is undefined and left out of the mean.
    n = _eval_json(handmade_runs / "baseline", "corruptions")["n"]
    rel = {}
    for c in b:
        base_loss = sum((1 - b[c][s]) - (1 - clean["baseline"]) for s in b[c])
        if base_loss >= 0.5 / n:
            rel[c] = sum((1 - g[c][s]) - (1 - clean["gradaug"]) for s in b[c]) / base_loss
    assert set(rel) == {"gaussian_noise", "fog"}  # contrast costs the baseline nothing
    assert statistics.fmean(rel.values()) == pytest.approx((0.18 / 0.34 + 0.08 / 0.54) / 2)  # by hand
    assert rows["gradaug"]["ce"] == pytest.approx(ce)
    assert rows["gradaug"]["mce"] == pytest.approx(statistics.fmean(ce.values()))
    assert rows["gradaug"]["relative_mce"] == pytest.approx(statistics.fmean(rel.values()))
    table = _outputs(_tagged(nb, "ce"), "text/markdown")
    assert len(table) == 1 and f"| gradaug | baseline | {100 * statistics.fmean(ce.values()):.1f} |" in table[0]


def test_without_env_loads_the_newest_demo_folder(handmade_runs, tmp_path):
    small_files = shutil.ignore_patterns("*.pt")  # the notebook never reads checkpoints
    older = tmp_path / "robustkit-demo-zzz" / "runs"   # sorts last by name, but is the older one
    newer = tmp_path / "robustkit-demo-aaa" / "runs"
    for target in (older, newer):
        shutil.copytree(handmade_runs, target, ignore=small_files)
    now = time.time()
    os.utime(older, (now - 3600, now - 3600))
    os.utime(newer, (now, now))
    nb = _execute(_until(_read_notebook(), "load"), tmp_path, {"ROBUSTKIT_RUNS": None}, tmp_path / "kernels")
    out = _stdout(_tagged(nb, "load"))
    assert f"Loading runs from {newer.resolve()} (newest of 2 robustkit-demo*/runs folder(s) found)" in out
    assert "2 run(s)" in out


def test_no_runs_anywhere_fails_with_a_clear_message(tmp_path):
    cwd = tmp_path / "empty"
    cwd.mkdir()
    with pytest.raises(CellExecutionError) as info:
        _execute(_until(_read_notebook(), "load"), cwd, {"ROBUSTKIT_RUNS": None}, tmp_path / "kernels")
    assert info.value.ename == "RobustkitError"
    assert "set ROBUSTKIT_RUNS" in info.value.evalue and "robustkit demo" in info.value.evalue
