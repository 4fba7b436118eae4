#!/usr/bin/env bash
# The paper's low-data grid as a Slurm job array: every array task trains its fixed share of the cells.
#
#   sbatch --array=1-16 train/slurm_grid.sh          # 16 jobs; each: --shard $SLURM_ARRAY_TASK_ID/16
#   python train/low_data_grid.py --cifar10 folder:data/cifar10-jpeg75 --methods all --list   # who does what
#
# Cell k (in --list order) belongs to shard (k mod N) + 1, so the tasks need no coordination; a task that is
# preempted or fails can be resubmitted as is (finished cells are skipped, unfinished ones resume).
# When all tasks are done: python eval/evaluate_grid.py runs/grid
#SBATCH --job-name=robustkit-grid
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=logs/grid-%A_%a.out
set -euo pipefail
N=${SLURM_ARRAY_TASK_COUNT:-16}
I=${SLURM_ARRAY_TASK_ID:?run me with sbatch --array=1-N}
python train/low_data_grid.py --cifar10 folder:data/cifar10-jpeg75 --stl10 stl10 --methods all \
  --seeds 0,1,2 --out runs/grid --device cuda --shard "$I/$N"
