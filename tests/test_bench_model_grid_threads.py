"""bench/model_grid_threads.py: the host model of a GPU grid with threads beside it runs every setting, restores
Python's switch interval, and refuses bad lists in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import load_script

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def model_script():
    return load_script(BENCH / "model_grid_threads.py")


def test_every_setting_is_a_row_and_the_switch_interval_comes_back(model_script, capsys):
    before = sys.getswitchinterval()
    rc = model_script.main(["--cells", "6", "--cell-ms", "2", "--calls", "5", "--background", "0.02",
                            "--ahead", "0,3", "--intervals-ms", "5,0.2", "--repeats", "1"])
    assert rc == 0 and sys.getswitchinterval() == before
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line[:1] == " " or line[:1].isdigit()]
    settings = [(r[0], r[1], r[2]) for r in rows]
    assert settings == [(bg, ahead, ms) for bg in ("0", "0.02") for ahead in ("0", "3") for ms in ("5", "0.2")]


def test_the_grid_is_never_faster_than_its_device(model_script):
    """The device runs each cell for its time, one after the other: the model's grid cannot take less."""
    assert model_script.grid_seconds(cells=5, cell_s=0.004, calls=3, ahead=2, interval_s=0.0002,
                                     background_s=0.0) >= 5 * 0.004


@pytest.mark.parametrize("args", [["--ahead", "x"], ["--ahead", "-1"], ["--intervals-ms", "0"], ["--repeats", "0"]])
def test_bad_settings_are_one_line(model_script, capsys, args):
    assert model_script.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
