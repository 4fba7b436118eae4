"""Results on disk and on screen: per-checkpoint JSON/CSV/PNG, CE/mCE, and the multi-run report.

Everything here works from result dicts (as produced by ``evaluate``) or from the files other modules
leave in a run folder (``config.yaml``, ``metrics.jsonl``, ``eval/*.json``); it never loads a checkpoint,
so a report can be rebuilt anywhere from a copy of the small files.

Conventions:

* accuracies are fractions in [0, 1] everywhere in data; only tables and plots show percent;
* results are long-format records, ``{"eps", "accuracy", "n"}`` or
  ``{"corruption", "severity", "accuracy", "n"}``; a partial result (a resumed evaluation) simply has
  fewer records, and every summary here is computed over the cells that are there, with the gaps named;
* the benchmark protocols' numbers lead (``protocols.py``): accuracy over the 15 benchmark corruptions x 5
  severities (CIFAR-10-C / CIFAR-100-C), ImageNet-C's AlexNet-normalised mCE; the 4 extra and all 19 apart;
* CE/mCE against a run the user chooses follow Hendrycks & Dietterich (ICLR 2019) too; they are returned as
  ratios (1.0 = as bad as the baseline) and shown in %;
* every file is written atomically (:mod:`robustkit.io`), plots use a private ``Figure`` with the Agg
  canvas, so no pyplot global state is created or leaked between plots.

Layout (one job per file):

* ``corruption_error.py`` - CE, mCE, relative CE/mCE against a chosen baseline;
* ``protocols.py``        - the benchmark numbers (15 x 5, AlexNet mCE), AlexNet's published errors;
* ``long_table.py``       - one long-format CSV over many runs (``report --csv``);
* ``results.py``          - reading the eval result dicts (points, cells, means);
* ``checkpoint_outputs.py`` - per-checkpoint ``eval/`` JSON/CSV/PNG and the CLI's tables;
* ``runs.py``             - run folders -> :class:`RunResult`, :func:`collect_runs`;
* ``multi_run.py``        - ``report.md`` over many runs (:func:`write_report`);
* ``seeds.py``            - runs that differ only in the seed: mean ± std of every number;
* ``released_gap.py``     - generated vs released corruptions of one model, per corruption;
* ``plots.py``, ``formatting.py``, ``paper.py`` - plots, text helpers, the paper's numbers.
"""

from robustkit.report.checkpoint_outputs import (
    corruption_table,
    fgsm_table,
    write_corruption_outputs,
    write_fgsm_outputs,
)
from robustkit.report.corruption_error import (
    corruption_errors,
    mce,
    relative_corruption_errors,
    relative_mce,
)
from robustkit.report.long_table import write_long_csv
from robustkit.report.multi_run import write_report
from robustkit.report.paper import PAPER_LOW_DATA, paper_number
from robustkit.report.protocols import ProtocolNumbers, protocol_numbers
from robustkit.report.results import corruption_means, mean_corruption_accuracy
from robustkit.report.runs import RunResult, collect_runs

__all__ = [
    "PAPER_LOW_DATA",
    "ProtocolNumbers",
    "RunResult",
    "collect_runs",
    "corruption_errors",
    "corruption_means",
    "corruption_table",
    "fgsm_table",
    "mce",
    "mean_corruption_accuracy",
    "paper_number",
    "protocol_numbers",
    "relative_corruption_errors",
    "relative_mce",
    "write_corruption_outputs",
    "write_fgsm_outputs",
    "write_long_csv",
    "write_report",
]
