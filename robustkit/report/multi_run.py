"""The multi-run report: ``report.md`` (robustness, per-corruption, low-data tables) and its plots."""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

from robustkit import io as rio
from robustkit.errors import RobustkitError
from robustkit.report.corruption_error import _versus_baseline
from robustkit.report.formatting import (
    _fmt_eps,
    _label_text,
    _md_table,
    _pct,
    _short_list,
)
from robustkit.report.long_table import write_long_csv
from robustkit.report.paper import (
    _PAPER_COLUMNS,
    _PAPER_DATASET_NAMES,
    _PAPER_ROW_NAMES,
    PAPER_ARCH,
    PAPER_LOW_DATA,
    paper_number,
)
from robustkit.report.plots import (
    _plot_bars,
    _plot_corruption_overlay,
    _plot_fgsm_overlay,
    _plot_seed_summary,
)
from robustkit.report.protocols import (
    COMMON,
    EXTRA,
    SEVERITIES,
    protocol_numbers,
)
from robustkit.report.released_gap import released_section
from robustkit.report.results import (
    _clean,
    _corruption_cells,
    _fgsm_points,
    attack_label,
    corruption_means,
    eval_stem,
)
from robustkit.report.runs import RunResult, _run_label, collect_runs
from robustkit.report.seeds import seed_groups, seeds_section


# --------------------------------------------------------------------------------------------------
# The multi-run report
# --------------------------------------------------------------------------------------------------
def _resolve_baseline(baseline: str | os.PathLike | None, runs: list[RunResult]) -> RunResult | None:
    """The baseline run: one of ``runs`` (by folder path or name) or a separate run dir (appended)."""
    if baseline is None:
        return None
    path = Path(baseline)
    if path.is_dir():
        resolved = path.resolve()
        for run in runs:
            if run.path == resolved:
                return run
        extra = collect_runs([path])
        if len(extra) != 1:
            raise RobustkitError(f"baseline {path} holds {len(extra)} runs; pass exactly one run folder")
        base = extra[0]
        taken = {r.name for r in runs}
        if base.name in taken:
            base.name = f"{base.name} [{path}]"
        runs.append(base)
        return base
    matches = [r for r in runs if r.name == str(baseline) or r.path.name == str(baseline)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise RobustkitError(f"baseline {str(baseline)!r} names {len(matches)} runs; pass its folder path instead")
    raise RobustkitError(f"baseline {str(baseline)!r} is neither a run folder nor the name of one of the runs")


def _cell_grid(runs: Sequence[RunResult]) -> dict[str, set[tuple[str, int]]]:
    """Per preset, the union of (corruption, severity) cells over all runs: the grid a run should fill."""
    grid: dict[str, set[tuple[str, int]]] = {}
    for run in runs:
        if run.corruptions:
            cells = _corruption_cells(run.corruptions)
            grid.setdefault(str(run.corruptions.get("preset")), set()).update(
                (c, s) for c, sev in cells.items() for s in sev
            )
    return grid


def _missing_cells(run: RunResult, grid: Mapping[str, set[tuple[str, int]]]) -> list[tuple[str, int]]:
    if not run.corruptions:
        return []
    cells = _corruption_cells(run.corruptions)
    present = {(c, s) for c, sev in cells.items() for s in sev}
    order = {c: i for i, c in enumerate(cells)}
    expected = grid.get(str(run.corruptions.get("preset")), set())
    return sorted(expected - present, key=lambda cs: (order.get(cs[0], len(order)), cs[0], cs[1]))



def _robustness_section(runs: Sequence[RunResult], base: RunResult | None) -> tuple[str, list[str]]:
    notes: list[str] = []
    eps_lists = {(run.name, i): tuple(_fgsm_points(a)) for run in runs for i, a in enumerate(run.attacks)}
    all_eps = sorted({e for eps in eps_lists.values() for e in eps if e > 0})  # eps 0 is the Clean column
    if len(set(eps_lists.values())) > 1:
        notes.append("Runs were evaluated at different ε; a blank means that ε was not evaluated for that run.")
    attacks = sorted({attack_label(a) for run in runs for a in run.attacks})
    presets = sorted({str(run.corruptions.get("preset")) for run in runs if run.corruptions})
    if len(presets) > 1:
        notes.append(
            f"Runs used different corruption presets ({', '.join(presets)}); their corruption numbers "
            "are not comparable, and CE is only computed against a baseline of the same preset."
        )
    sizes = sorted({int(r["n"]) for run in runs for r in (run.fgsm, run.corruptions) if r and r.get("n") is not None})
    if len(sizes) > 1:
        notes.append(
            f"Evaluations used different numbers of test images (n = {', '.join(map(str, sizes))}; see Sources): "
            "small n means wide error bars, and a --limit subset is not the full test split."
        )
    datasets = sorted({run.dataset for run in runs})
    attack_head = attacks[0].upper() if len(attacks) == 1 else "attack"
    header = ["Run", "Method", "Labels", "Seed"]
    if len(datasets) > 1:
        header.append("Dataset")
    if len(attacks) > 1:
        header.append("Attack")
        if any(run.more_attacks for run in runs):
            notes.append("A run evaluated with several attacks has one row per attack; its corruption columns are "
                         "on the first.")
        if len({attack_label(run.fgsm) for run in runs if run.fgsm}) > 1:
            notes.append(f"Runs used different attacks ({', '.join(attacks)}): compare the ε columns with care.")
    numbers = {run.name: protocol_numbers(run.corruptions) for run in runs if run.corruptions}
    with_alexnet = any(n.alexnet_applies for n in numbers.values())
    with_evaluated = any(not n.complete for n in numbers.values())
    header += ["Clean", *(f"{attack_head} ε={_fmt_eps(e)}" for e in all_eps), "Corr. acc. 15×5"]
    if with_alexnet:
        header += ["mCE (AlexNet)", "Rel. mCE (AlexNet)"]
    if with_evaluated:
        header.append("Mean evaluated")
    if base is not None:
        header += ["mCE", "Rel. mCE"]

    grid = _cell_grid(runs)
    n_left = 4 + (len(datasets) > 1) + (len(attacks) > 1)
    rows = []
    for run in runs:
        if not (run.fgsm or run.corruptions):
            continue
        points = _fgsm_points(run.fgsm) if run.fgsm else {}
        nums = numbers.get(run.name)
        mean_corr = nums.evaluated_mean if nums else None
        missing = _missing_cells(run, grid)
        mean_text = _pct(mean_corr) + ("*" if missing and mean_corr is not None else "")
        if missing:
            notes.append(
                f"{run.name}: {len(missing)} corruption cell(s) not evaluated that other runs have "
                f"({_short_list([f'{c} s{s}' for c, s in missing])}); * = mean over the cells present."
            )
        if nums and not nums.complete:
            notes.append(f"{run.name}: {nums.missing_text()}.")
        mixed = sorted({str(r["dataset"]) for r in (*run.attacks, run.corruptions)
                        if r and r.get("dataset") and r.get("source") != "released"})
        if len(mixed) > 1:
            notes.append(f"{run.name}: its results are on different test data ({', '.join(mixed)}), so its row "
                         "mixes them; evaluate each dataset into its own folder (--out).")
        who = [_run_label(run, base), run.method, _label_text(run.labels, run.has_config), _seed_text(run)]
        who += [_dataset_text(run.dataset)] if len(datasets) > 1 else []
        row = list(who)
        if len(attacks) > 1:
            row.append(attack_label(run.fgsm) if run.fgsm else "")
        row += [_pct(run.clean_accuracy), *(_pct(points.get(e)) for e in all_eps), _pct(nums.accuracy if nums else None)]
        if with_alexnet:
            row += [_pct(nums.mce if nums else None), _pct(nums.relative_mce if nums else None)]
        if with_evaluated:
            row.append(mean_text if nums and not nums.complete else "")
        if base is not None:
            ces, m, rel, problem = _versus_baseline(run, base)
            if problem:
                notes.append(f"{run.name}: no CE against the baseline ({problem}).")
            elif run.corruptions and base.corruptions:
                shared = [c for c in ces if c in COMMON]
                base_common = [c for c in _corruption_cells(base.corruptions) if c in COMMON]
                if ces and not shared:
                    notes.append(f"{run.name}: no benchmark corruption in common with the baseline; mCE over the "
                                 f"{len(ces)} corruption(s) both have.")
                elif len(shared) < len(base_common):
                    notes.append(f"{run.name}: mCE over {len(shared)} of the baseline's {len(base_common)} benchmark "
                                 "corruptions (only cells both runs have).")
            row += [_pct(m), _pct(rel)]
        rows.append(row)
        for other in run.more_attacks:   # one more row per attack, its ε columns only
            others = _fgsm_points(other)
            extra = [*who, attack_label(other), _pct(_clean(other)), *(_pct(others.get(e)) for e in all_eps)]
            rows.append(extra + [""] * (len(header) - len(extra)))

    text = ["## Robustness", ""]
    if len(datasets) == 1:
        text += [f"Dataset: `{_dataset_text(datasets[0])}`. Accuracy in %, columns as in the GradAug paper's "
                 "robustness table (clean, each ε, corruption accuracy).", ""]
    text += ["Corr. acc. 15×5: mean accuracy over the 15 benchmark corruptions x 5 severities (the CIFAR-10-C / "
             "CIFAR-100-C number; see Benchmark protocols)"
             + ("; mCE (AlexNet): ImageNet-C's AlexNet-normalised mCE, lower is better" if with_alexnet else "")
             + ("; Mean evaluated: mean over the cells a run has when it lacks some of the 15 x 5, "
                "not a benchmark number" if with_evaluated else "") + ".", ""]
    if base is not None:
        text += [f"mCE and relative mCE in % of the baseline `{base.name}` (100 = as many errors as the baseline; "
                 "lower is better), averaged over the 15 benchmark corruptions as in Hendrycks & Dietterich (the "
                 "extra 4 have a CE below but are not in the mean).", ""]
    if rows:
        text.append(_md_table(header, rows, left=n_left))
    else:
        text.append("_No run has eval results yet: run `robustkit fgsm` / `robustkit corrupt` first._")
    skipped = [run.name for run in runs if not (run.fgsm or run.corruptions)]
    if skipped:
        notes.append(f"Without eval results (low-data table only): {_short_list(skipped)}.")
    return "\n".join(text), notes


def _corruption_section(runs: Sequence[RunResult], base: RunResult | None) -> tuple[str, list[str]]:
    with_corr = [run for run in runs if run.corruptions]
    if not with_corr:
        return "", []
    notes: list[str] = []
    corruptions: list[str] = []
    for run in with_corr:
        corruptions += [c for c in _corruption_cells(run.corruptions) if c not in corruptions]
    if any(set(_corruption_cells(run.corruptions)) != set(corruptions) for run in with_corr):
        notes.append("Runs cover different corruptions; a blank means not evaluated.")
    rank = {c: i for i, c in enumerate((*COMMON, *EXTRA))}   # the 15, then the 4 extra, then any other
    corruptions.sort(key=lambda c: rank.get(c, len(rank)))
    grid = _cell_grid(runs)
    numbers = [protocol_numbers(run.corruptions) for run in with_corr]
    with_extra = any(c in EXTRA for c in corruptions)
    with_evaluated = any(not n.complete for n in numbers)
    summary = ["15 × 5", *(["Extra 4", "All 19"] if with_extra else []), *(["Evaluated"] if with_evaluated else [])]
    rows = []
    for run, nums in zip(with_corr, numbers):
        means = corruption_means(run.corruptions)
        partial = {c for c, _ in _missing_cells(run, grid)}
        cells = [_pct(means.get(c)) + ("*" if c in partial and c in means else "") for c in corruptions]
        row = [_run_label(run, base), *cells, _pct(nums.accuracy)]
        if with_extra:
            row += [_pct(nums.extra_accuracy), _pct(nums.all_accuracy)]
        if with_evaluated:
            row.append(_pct(nums.evaluated_mean) if not nums.complete else "")
        rows.append(row)
    text = ["## Accuracy per corruption", "",
            "Mean over severities, % (* = some severities missing). The 15 benchmark corruptions first, then "
            + ("the 4 extra (Hendrycks & Dietterich's validation set). " if with_extra else "")
            + "15 × 5: the benchmark number (blank unless all 75 cells are there)"
            + ("; Extra 4 and All 19: means over the 4 extra x 5 and all 19 x 5, not benchmark numbers"
               if with_extra else "")
            + ("; Evaluated: mean over the cells a run has, for runs without the benchmark number"
               if with_evaluated else "") + ".", ""]
    text.append(_md_table(["Run", *corruptions, *summary], rows))
    if base is not None:
        ce_rows = []
        for run in with_corr:
            ces, m, rel, _ = _versus_baseline(run, base)
            ce_rows.append([_run_label(run, base), *(_pct(ces.get(c)) for c in corruptions), _pct(m), _pct(rel)])
        text += ["", f"### Corruption error (CE, % of `{base.name}`)", "",
                 "CE_c = Σ_s E_s,c(run) / Σ_s E_s,c(baseline), E = 1 − accuracy, over the severities both have; "
                 "relative mCE uses the errors minus the clean error; mCE and Rel. mCE average the 15 benchmark "
                 "corruptions only.", ""]
        text.append(_md_table(["Run", *corruptions, "mCE", "Rel. mCE"], ce_rows))
    return "\n".join(text), notes


def _protocol_section(runs: Sequence[RunResult], base: RunResult | None) -> tuple[str, list[str]]:
    """Per run with corruption results: the benchmark's numbers (15 x 5, per severity, AlexNet mCE for
    ImageNet-C) and, apart, the 4 extra and all 19; what is missing where a number cannot be given."""
    # One row per corruption result: a run with both generated and released results gets a second row.
    entries = []
    for run in runs:
        for result in run.corruption_results:
            second = result is not run.corruptions
            entries.append((_run_label(run, base) + (", released files" if second else ""),
                            run.name + (" (released files)" if second else ""), result))
    if not entries:
        return "", []
    numbers = [protocol_numbers(result) for *_, result in entries]
    notes: list[str] = []
    with_alexnet = any(n.alexnet_applies for n in numbers)
    has_extra = [any(c in _corruption_cells(result) for c in EXTRA) for *_, result in entries]
    with_extra = any(has_extra)
    header = ["Run", "Protocol", "Clean", "Acc. 15×5", *(f"s{s}" for s in SEVERITIES)]
    header += ["mCE (AlexNet)", "Rel. mCE (AlexNet)"] if with_alexnet else []
    header += ["Extra 4", "All 19"] if with_extra else []
    rows = []
    for (label, name, result), n, extra in zip(entries, numbers, has_extra):
        row = [label, n.protocol, _pct(result.get("clean_accuracy")),
               _pct(n.accuracy) if n.complete else "missing", *(_pct(n.by_severity.get(s)) for s in SEVERITIES)]
        if with_alexnet:
            row += [_pct(n.mce), _pct(n.relative_mce)]
        if with_extra:
            row += [_pct(n.extra_accuracy), _pct(n.all_accuracy)]
        rows.append(row)
        if not n.complete:
            notes.append(f"{name}: {n.missing_text()}.")
        if n.mce_note and n.complete:
            notes.append(f"{name}: {n.mce_note}.")
        if extra and n.extra_accuracy is None:
            notes.append(f"{name}: no Extra 4 / All 19 mean: missing {_short_list(n.extra_missing)}.")
    text = ["## Benchmark protocols", "",
            "The numbers papers report (Hendrycks & Dietterich, ICLR 2019): the 15 benchmark corruptions x 5 "
            "severities. Acc. 15×5 = mean accuracy over the 75 cells (CIFAR-10-C / CIFAR-100-C, RobustBench); "
            "s1..s5 = mean over the 15 at that severity, in %."
            + (" ImageNet-C: mCE = mean over the 15 of Σ_s E_c,s / Σ_s E_c,s(AlexNet), relative mCE the same with "
               "each model's clean error subtracted first, AlexNet's published errors as the reference (100 = "
               "AlexNet; lower is better)." if with_alexnet else "")
            + (" Extra 4 = speckle_noise, gaussian_blur, spatter, saturate (the authors' validation set) and All 19 "
               "are shown apart: they are not benchmark numbers." if with_extra else ""), "",
            _md_table(header, rows, left=2)]
    return "\n".join(text), notes


def _seed_text(run: RunResult) -> str:
    return "" if run.seed is None else str(run.seed)


def _dataset_text(dataset: str) -> str:
    """``folder:/abs/path/cifar10-jpeg75`` -> ``folder:cifar10-jpeg75`` (the path is noise in a table)."""
    if dataset.startswith("folder:"):
        return "folder:" + Path(dataset[len("folder:"):]).name
    return dataset


def _mean_std(values: Sequence[float]) -> str:
    """'mean ± sample std' in % with two decimals (like the paper); just the mean for one seed."""
    mean = 100 * statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def _low_data_section(runs: Sequence[RunResult]) -> tuple[str, list[str]]:
    notes: list[str] = []
    groups: dict[tuple, list[RunResult]] = {}
    no_acc = []
    for run in runs:
        if run.final_test_accuracy is None:
            no_acc.append(run.name)
            continue
        key = (run.dataset, run.labels if run.has_config else "?", run.method, run.arch, run.steps)
        groups.setdefault(key, []).append(run)

    def sort_key(item):
        (dataset, labels, method, arch, steps), _ = item
        order = list(_PAPER_ROW_NAMES).index(method) if method in _PAPER_ROW_NAMES else 99
        return (dataset, labels if isinstance(labels, int) else 10**9, order, method, arch, steps or 0)

    rows, folder_cells, arch_cells, eval_sources = [], False, False, []
    for (dataset, labels, method, arch, steps), members in sorted(groups.items(), key=sort_key):
        accs = [run.final_test_accuracy[0] for run in members]
        eval_sources += [run.name for run in members if run.final_test_accuracy[1] == "eval"]
        seeds = sorted(s for s in (run.seed for run in members) if s is not None)
        paper = paper_number(dataset, labels if isinstance(labels, int) else None, method)
        paper_text = ""
        if paper is not None:
            marks = ""
            if dataset.startswith("folder:"):
                marks += "†"
                folder_cells = True
            if arch.lower() != PAPER_ARCH:
                marks += "‡"
                arch_cells = True
            paper_text = f"{paper[0]:.2f} ± {paper[1]:.2f}{marks}"
        rows.append([
            _dataset_text(dataset), _label_text(labels if isinstance(labels, int) else None, labels != "?"),
            method, arch, "" if steps is None else str(steps), str(len(members)),
            ", ".join(map(str, seeds)), _mean_std(accs), paper_text,
        ])
    if folder_cells:
        notes.append(
            "† The dataset is a folder re-encoding of the paper's dataset (e.g. CIFAR-10 as JPEG q75), "
            "which costs a few points: compare methods with each other, not with the paper's absolute numbers."
        )
    if arch_cells:
        notes.append(f"‡ The paper's numbers are for {PAPER_ARCH}; this group used another architecture.")
    if eval_sources:
        notes.append(
            "Test accuracy taken from the eval JSON's clean accuracy (no test_acc in metrics.jsonl): "
            f"{_short_list(eval_sources)}."
        )
    if no_acc:
        notes.append(f"No test accuracy yet (not in the table): {_short_list(no_acc)}.")

    text = ["## Low-data accuracy (mean ± std over seeds)", "",
            "Final test accuracy in %, runs grouped by dataset, labels, method, architecture and steps; "
            "std is the sample std over seeds. Paper: GradAug (Yang et al., NeurIPS 2020), WRN-28-2.", ""]
    header = ["Dataset", "Labels", "Method", "Arch", "Steps", "n", "Seeds", "Ours", "Paper"]
    text.append(_md_table(header, rows, left=5) if rows else "_No run has a test accuracy yet._")
    text += ["", "<details><summary>The paper's low-data table (accuracy %)</summary>", ""]
    paper_header = ["Model", *(f"{_PAPER_DATASET_NAMES[d]} {n}" for d, n in _PAPER_COLUMNS)]
    paper_rows = []
    for method, row_name in _PAPER_ROW_NAMES.items():
        cells = [PAPER_LOW_DATA[col].get(method) for col in _PAPER_COLUMNS]
        paper_rows.append([row_name, *(f"{c[0]:.2f} ± {c[1]:.2f}" if c else "–" for c in cells)])
    text += [_md_table(paper_header, paper_rows), "", "</details>"]
    return "\n".join(text), notes



def _common_parent(runs: Sequence[RunResult]) -> Path:
    return Path(os.path.commonpath([str(run.path.parent) for run in runs]))


def _sources_section(runs: Sequence[RunResult], parent: Path) -> str:
    rows = []
    for run in runs:
        sha = str(run._from_eval("sha256") or "")[:12]
        n_f = run.fgsm.get("n") if run.fgsm else None
        n_c = run.corruptions.get("n") if run.corruptions else None
        try:
            where = run.path.relative_to(parent).as_posix()
        except ValueError:
            where = str(run.path)
        rows.append([run.name, where, sha, run.dataset, "" if n_f is None else str(n_f),
                     "" if n_c is None else str(n_c), str(run._from_eval("device") or "")])
    header = ["Run", "Folder", "Checkpoint sha256", "Dataset", "Attack n", "Corruption n", "Device"]
    return "\n".join(["## Sources", "", f"Folders relative to `{parent}`.", "",
                      _md_table(header, rows, left=4)])


def _notes_block(notes: Sequence[str]) -> list[str]:
    return ["", *(f"- {note}" for note in dict.fromkeys(notes))] if notes else []


def write_report(
    run_dirs: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    baseline: str | os.PathLike | None = None,
    csv: str | os.PathLike | None = None,
) -> Path:
    """Gather the runs' eval JSONs into ``report.md`` + plots; return the report.md path.

    ``csv``: also write one long-format table over all the runs there (see
    :mod:`robustkit.report.long_table`), one row per evaluated cell.

    ``run_dirs``: run folders or folders of runs (see :func:`collect_runs`). ``baseline``: a run folder
    (one of the runs, or a separate one that is then added as a row) or a run's name; it must have
    corruption results, since CE/mCE are normalised by it. ``out_dir`` defaults to
    ``<common parent of the runs>/report``. Writes fgsm_overlay.png, corruption_overlay.png and
    mce_bars.png (with a baseline) or mean_corruption_bars.png (without), for whatever data exists.
    """
    runs = collect_runs(run_dirs)
    base = _resolve_baseline(baseline, runs)
    if base is not None and not (base.corruptions and _corruption_cells(base.corruptions)):
        raise RobustkitError(
            f"baseline {base.name} has no corruption results: run `robustkit corrupt {base.path}` first, "
            "or choose another --baseline"
        )
    parent = _common_parent(runs)
    out = rio.writable_dir(Path(out_dir) if out_dir is not None else parent / "report")
    if csv is not None:
        rio.writable_dir(Path(csv).parent, "--csv")
        write_long_csv(runs, csv)

    bars_name = "mce_bars.png" if base is not None else "mean_corruption_bars.png"
    plots = {
        "fgsm_overlay.png": ("Accuracy vs ε", _plot_fgsm_overlay(runs, base)),
        "corruption_overlay.png": ("Accuracy vs severity", _plot_corruption_overlay(runs, base)),
        bars_name: ("mCE" if base is not None else "Clean vs corruption accuracy", _plot_bars(runs, base)),
        "seeds.png": ("Mean ± std over seeds", _plot_seed_summary(seed_groups(runs, base))),
    }
    # An attack that some run has besides its first (PGD after FGSM, ...) gets a plot of its own.
    for other in dict.fromkeys(attack_label(a) for run in runs for a in run.more_attacks):
        stem = eval_stem({"attack": other}, "fgsm")
        plots[f"{stem}_overlay.png"] = (f"Accuracy vs ε, {other}", _plot_fgsm_overlay(runs, base, other))
    stale = "mean_corruption_bars.png" if base is not None else "mce_bars.png"
    (out / stale).unlink(missing_ok=True)  # a previous report's other bar chart would now be misleading
    for old in out.glob("*_overlay.png") if out.is_dir() else []:
        if old.name not in plots and (out / "report.md").is_file():
            old.unlink()   # an attack overlay of a previous report whose runs had that attack
    written = []
    for name, (caption, png) in plots.items():
        if png is None:
            (out / name).unlink(missing_ok=True)
            continue
        rio.write_bytes(out / name, png)
        written.append(f"![{caption}]({name})")

    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = [
        "# robustkit report",
        "",
        f"{len(runs)} run(s), generated {created}"
        + (f", baseline `{base.name}`." if base is not None else ", no baseline (pass --baseline for CE/mCE)."),
        "",
    ]
    for section in (_robustness_section(runs, base), _protocol_section(runs, base), seeds_section(runs, base),
                    _corruption_section(runs, base),
                    released_section(runs), _low_data_section(runs)):
        text, notes = section
        if text:
            lines += [text, *_notes_block(notes), ""]
    if written:
        lines += ["## Plots", "", *(f"{w}\n" for w in written)]
    lines += [_sources_section(runs, parent), ""]
    return rio.write_text(out / "report.md", "\n".join(lines))
