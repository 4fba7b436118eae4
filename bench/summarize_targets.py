"""Collect the targets the benchmarks wrote (``--json``) into one summary: printed as a table (MET / NOT MET)
and written as JSON with the device, torch, commit and each stage's exit code.

    python bench/summarize_targets.py TARGETS_DIR SUMMARY.json [STAGE_LINE ...]   (bench/gpu_check.sh calls it)
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path


def working_tree_commit(where: Path) -> str:
    """The short commit of ``where``'s repository, + '+changes' where the files differ from it (a working tree copied
    onto the GPU machine can come with the .git of an earlier commit: the files that ran are then not that commit's);
    '?' without git."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=where)

    try:
        commit = git("rev-parse", "--short", "HEAD").stdout.strip()
        if not commit:
            return "?"
        return commit + ("+changes" if git("diff", "--quiet", "HEAD", "--").returncode == 1 else "")
    except OSError:
        return "?"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: summarize_targets.py TARGETS_DIR SUMMARY.json [STAGE_LINE ...]", file=sys.stderr)
        return 2
    folder, out = Path(argv[0]), Path(argv[1])
    import torch

    targets = []
    for f in sorted(folder.glob("*.json")):
        for t in json.loads(f.read_text()).get("targets", []):
            targets.append({**t, "from": f.stem})
    commit = working_tree_commit(Path(__file__).parent)
    summary = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__, "python": platform.python_version(), "commit": commit,
        "stages": argv[2:], "targets": targets,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    tmp.replace(out)
    print(f"\n## targets ({summary['device']}, torch {summary['torch']}, commit {commit})")
    width = max((len(t["name"]) for t in targets), default=10)
    for t in targets:
        rel = "<=" if t["lower_is_better"] else ">="
        print(f"{t['name']:<{width}}  {t['measured']:>10,.2f} {t['unit']:<6} goal {rel} {t['goal']:g}  "
              f"{'MET' if t['met'] else 'NOT MET'}")
    print(f"summary written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
