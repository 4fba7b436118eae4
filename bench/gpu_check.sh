#!/usr/bin/env bash
# Everything robustkit does on a GPU, verified and timed in one go, on a fresh GPU machine.
#
#   bash bench/gpu_check.sh [STAGE ...]        # stages: tests bench demo paper (default: all, in that order)
#   bash bench/gpu_check.sh quick              # everything the targets need, in one command of <= 6 minutes
#
# Needs only this repository, a Python with torch (CUDA), torchvision, typer, rich, numpy, scikit-learn,
# scikit-image, opencv, matplotlib and pyyaml, and the `shared` folder (the torchattacks and
# imagecorruptions wheels in shared/wheels, the CIFAR-10 archive in shared/data). Nothing is fetched from
# the network: the two wheels are installed with --no-index --no-deps into a private folder.
# `shared` is looked for in $ROBUSTKIT_SHARED, <repo>/../shared, <repo>/shared and <repo>/.shared (copy it
# there, e.g. `cp -r ../shared .shared`, when only the repository travels to the GPU machine).
#
# Stages:
#   quick  = quick-tests quick-train quick-pipeline quick-eval (~4-6 min on an H100: 4.65 min on 2026-11-27, the sixth
#          run; 6.58 min the seventh, on a machine whose host ran everything ~1.4x slower, which is why the CUDA
#          tests now run in two halves side by side, the ImageNet benchmark's JPEGs are made meanwhile, and two
#          repeats left quick): the CUDA tests;
#          bench_train (authors' loop, 60 timed steps, vs robustkit's default step, GradAug and baseline;
#          $TRAIN_VARIANTS adds more);
#          bench_pipeline (GradAug-semi 1,000 steps, FGSM, CIFAR-10-C 19 x 5 x 10,000 at corrupt's default batch
#          (5,000 at 32 px since 2026-11-27; folded + fused convolutions, --fuse-conv, the CUDA default since the
#          same day), run again warm at 5,000, ~5 s; the run with --no-fuse-conv (1.04-1.17x slower in four
#          runs), the old batch of 1,000 and --cudnn-benchmark (the grid's cells 1.34x and 0.99x) are no longer
#          re-run: $PIPELINE_SWITCHES=no-fuse-conv brings the first back); the evaluation benchmarks
#          (the ImageNet one with its DataLoader + imagecorruptions reference). Every target goes into one JSON
#          summary ($GPU_CHECK_SUMMARY, default bench/results/gpu_check-<date>.json: device, torch,
#          commit, targets with measured/goal/met), with one more: the whole `quick` command (setup included)
#          in <= 6 minutes, NOT MET where a stage was skipped or stopped.
#   quick-profile (not in quick since 2026-11-27: with it, quick took 6.03 min; ~3 min): profile_corruptions
#          (what holds the slow corruptions back: launches, syncs, top ops, dispatch vs device time; an
#          ImageNet-C cell split into its parts; JSON in $GPU_CHECK_OUT/targets/profile.json), then the same at
#          32 px for all 19 corruptions with a CIFAR-10-C cell of WRN-28-2 at corrupt's default batch there, 5,000
#          (JSON in $GPU_CHECK_OUT/targets/profile-cifar.json); both cells run the network as corrupt does (folded +
#          fused on CUDA) and time its step other ways too (the plain network, fused again as a check, + cudnn.benchmark,
#          + a CUDA graph, TorchInductor: what each would save the grid; ~1.5 min in all; measured 46 s on 2026-11-27)
#   quick-step (a second call, ~5 min, not in quick): a long run's default step on CUDA, what `train --compile`
#          gives and what a run of >= 50,000 steps gets unasked (TorchInductor-fused passes inside the graphs,
#          batches prefetched: graphs-inductor[-streams] + prefetch; its targets carry the plain names, the issue's:
#          the baseline's <= 3 ms is met only compiled), against a short run's default (graphs-streams for GradAug,
#          graphs for the baseline, prefetched) and compiled without the prefetch, for both methods; their CUDA
#          tests (the TorchInductor ones; quick has the rest), and profile_train (where a step's time goes; JSON
#          in $GPU_CHECK_OUT/profiles/)
#   quick-accuracy (a third call, ~3.5 min, not in quick): final test accuracy of GradAug-semi after 1,000
#          steps, captured (seeds $ACCURACY_SEEDS, default 0,1,2: the seed-to-seed spread) vs eager (the first
#          $EAGER_SEEDS, default 1), modes $ACCURACY_MODES (default: default,eager; default = the device's mode)
#   quick-cold (not in quick, ~2.5 min): bench_corrupt_cold, CIFAR-10-C's corrupt job (WRN-28-2, 19 x 5 x 10,000)
#          in fresh processes, 2 each: as shipped, reading each cell's counts at once (one host sync per cell, as
#          before), Python's default 5 ms thread switch interval, the corruptions' warm-up off, and warming each
#          corruption's first cell first (what the cold run's ~0.7 s of first calls is, and what hides most of it)
#   quick-eval-compile (not in quick, ~5 min): `robustkit fgsm/corrupt --compile` (the network compiled by
#          TorchInductor) against the uncompiled stages in the same runs: bench_imagenet as in quick-eval (cells,
#          compiled and uncompiled ceilings) and bench_pipeline's FGSM and CIFAR-10-C stages (100 training steps)
#   quick-kernels (not in quick, ~2 min): robustkit's Triton kernels (jpeg_compression, glass_blur, spatter)
#          at 224 px against the torch ops they replaced and at other warps / tile sizes (bench_corruptions
#          --kernel-settings), and their CUDA tests (quick-tests has them too)
#   quick-fp16 (not in quick, ~3 min): two ideas for the baseline's <= 3 ms, alone and together, against the
#          default steps: the -fp16 steps (float16 autocast with loss scaling on the device, so that batch norm
#          runs cuDNN's kernels; bfloat16 inputs get torch's own channels_last ones, 0.95 of the baseline's 3.3 ms
#          of kernels in the sixth run) and fit(prefetch=True) (each batch made on a side stream while the step
#          before runs: the data path's few dozen small kernels off the step's stream); their CUDA tests, the
#          baseline's default (prefetched) / graphs / graphs-fp16 / both and GradAug's graphs-streams-* likewise, and
#          profile_train of the baseline's graphs-fp16 (JSON in $GPU_CHECK_OUT/profiles/). Their accuracy: quick-accuracy
#          with ACCURACY_MODES=default,graphs-streams-fp16. Measured 2026-11-27 (eighth run): the prefetch 1-2% faster
#          in every pair, the CUDA default since (so `default` is prefetched, `graphs` not); -fp16 faster for the
#          baseline (3.36 vs 3.58 ms), slower for GradAug (9.52 vs 9.35), no default
#   quick-baseline (not in quick, ~1 min): the baseline's captured step in NCHW and in fp32 against the default
#          (bf16, channels_last); measured on 2026-11-27 (fifth run): 6.8 and 5.0 ms against 3.6
#   quick-warm-up-batch (not in quick, ~1 min; run it AFTER quick, on the same machine: on a machine whose Triton
#          cache is empty the warm-up compiles robustkit's Triton kernels first, ~18 s on 2026-11-27, and the grid
#          waits for that): bench_pipeline's cold CIFAR-10-C stage with the corruptions' warm-up made on the grid's
#          batch (5,000 images) instead of 2, to compare with quick's pipeline figure (the sixth run, 2026-11-27:
#          4.49 s, no better; the FFT corruptions are warmed on the grid's batch sizes by default since)
#   quick-trace (not in quick, ~1 min; after quick, as quick-warm-up-batch): bench_pipeline's cold CIFAR-10-C stage
#          under torch.profiler, every thread: its longest host-side calls (the sixth run, 2026-11-27: cuFFT plans for
#          the grid's batch on the grid's thread, pageable copies of small tables in the warm-up's, both waiting for
#          the queued cells) and the trace ($GPU_CHECK_OUT/variants/corrupt-cold-trace.json.gz)
#   quick-sync-each (not in quick, ~1 min; after quick): bench_pipeline's cold CIFAR-10-C stage timed as this
#          script timed it until 2026-11-27, with the device synchronised at each progress report (bench/common.py
#          CellClock: that emptied the queue of cells the grid keeps ahead at every cell), to compare with quick's
#          figure, now timed without it
#   tests  the CUDA tests (pytest -m cuda) and the CUDA-path tests that run on any device
#   bench  every benchmark with --device cuda (corruptions, FGSM, training, whole pipeline)
#   demo   robustkit demo --device cuda
#   paper  CIFAR-10, 250 labels, GradAug, WRN-28-2, default length (10,000 steps), then the full 19 x 5
#          corruption sweep and the FGSM sweep on all 10,000 test images (goal: corruptions < 10 s)
#
# $GPU_TESTS_K: the pytest -k expression of quick-tests (default "not inductor"; a subset for a short call).
# One log: $GPU_CHECK_LOG (default bench/gpu_check-<date>.log); outputs in $GPU_CHECK_OUT (default
# /tmp/robustkit-gpu-check). The last lines of the log are a summary: each stage, its exit code, its time.
# Out of time: with $GPU_CHECK_BUDGET (seconds), a stage that would start after it is skipped (logged); a
# `timeout` that stops the script (SIGTERM) still gets the summary and the JSON of the stages that finished.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
STAMP=$(date -u +%Y-%m-%d)
LOG=${GPU_CHECK_LOG:-$REPO/bench/gpu_check-$STAMP.log}
OUT=${GPU_CHECK_OUT:-/tmp/robustkit-gpu-check}
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(tests bench demo paper)
EXPANDED=()
QUICK=0            # `quick` was asked for: its whole time is a target of its own
QUICK_GOAL_MIN=6
for s in "${STAGES[@]}"; do
  if [ "$s" = quick ]; then EXPANDED+=(quick-tests quick-train quick-pipeline quick-eval quick-end); QUICK=1; else EXPANDED+=("$s"); fi
done
STAGES=("${EXPANDED[@]}")
SUMMARY_JSON=${GPU_CHECK_SUMMARY:-$REPO/bench/results/gpu_check-$STAMP.json}
TARGETS=$OUT/targets
rm -rf "$TARGETS"; mkdir -p "$TARGETS"
mkdir -p "$OUT" "$(dirname "$LOG")"
: > "$LOG"
log() { echo "$*" | tee -a "$LOG"; }

SHARED=""
for c in "${ROBUSTKIT_SHARED:-}" "$REPO/../shared" "$REPO/shared" "$REPO/.shared"; do
  if [ -n "$c" ] && [ -d "$c/wheels" ]; then SHARED=$(cd "$c" && pwd); break; fi
done
if [ -z "$SHARED" ]; then
  log "error: no shared/ folder with wheels/ found (set ROBUSTKIT_SHARED, or cp -r ../shared .shared)"; exit 2
fi
export ROBUSTKIT_SHARED=$SHARED
export ROBUSTKIT_CACHE=$OUT/cache ROBUSTKIT_DATA=$OUT/data

log "# robustkit GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- 2>/dev/null; [ $? -eq 1 ] && echo '+changes')"
log "# command: bash bench/gpu_check.sh ${STAGES[*]}"

# Setup, its three parts side by side (one after another, they were most of the ~20 s outside the stages on
# 2026-11-27): the two wheels that are not on the GPU image, installed privately (no network, no dependency
# changes); the CIFAR-10 archive, extracted once; and one Python that prints the versions and checks the GPU
# (importing torch is the slow part of it).
SITE=$OUT/site
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$SHARED"/wheels/*.whl >"$OUT/setup-pip.log" 2>&1 &
PIP_PID=$!
ARCHIVE=$SHARED/data/cifar10-jpeg75.tar.gz
CIFAR=$OUT/cifar10-jpeg75
TAR_PID=""
if [ -f "$ARCHIVE" ] && [ ! -d "$CIFAR/test" ]; then
  rm -rf "$CIFAR.tmp"
  (mkdir -p "$CIFAR.tmp" && tar -xzf "$ARCHIVE" -C "$CIFAR.tmp" && mv "$CIFAR.tmp" "$CIFAR") &
  TAR_PID=$!
fi
$PY - <<'EOF' 2>&1 | tee -a "$LOG"
import platform, sys, torch
print(f"# python {platform.python_version()}, torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE'}")
sys.exit(0 if torch.cuda.is_available() else 1)
EOF
GPU_OK=${PIPESTATUS[0]}
wait "$PIP_PID"; PIP_RC=$?
cat "$OUT/setup-pip.log" >>"$LOG"
TAR_RC=0
if [ -n "$TAR_PID" ]; then wait "$TAR_PID"; TAR_RC=$?; fi
if [ "$GPU_OK" != 0 ]; then log "error: torch sees no CUDA GPU here: this script is for the GPU machine"; exit 2; fi
[ "$PIP_RC" = 0 ] || { log "error: installing $SHARED/wheels failed (see $OUT/setup-pip.log)"; exit 2; }
[ "$TAR_RC" = 0 ] || { log "error: extracting $ARCHIVE failed"; exit 2; }
export PYTHONPATH=$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}
RK=("$PY" -m robustkit)
log "# setup (wheels, archive, GPU check side by side) took ${SECONDS} s"

# The CUDA tests in two pytest processes side by side, on the one GPU (no test is timed): the evaluation side
# (corruptions, their Triton kernels, which its first test compiles on a fresh machine, ~20 s; the grid) and the
# rest (training, attacks, data). One after another they took 87 s of the seventh run's 6.58-min `quick` on a
# machine with a slow host (2026-11-27). The two -k expressions are complements: every test runs once.
EVAL_TESTS="corruption or triton or jpeg or glass or spatter or table or released"
cuda_tests_side_by_side() {   # cuda_tests_side_by_side K: the CUDA tests pytest -k K selects, in two halves
  local k=$1 a=$OUT/tests-evaluation.log b=$OUT/tests-rest.log
  "$PY" -m pytest -q -p no:cacheprovider --durations=5 -m cuda tests/test_gpu.py -k "($k) and ($EVAL_TESTS)" \
    >"$a" 2>&1 &
  local pid=$!
  "$PY" -m pytest -q -p no:cacheprovider --durations=5 -m cuda tests/test_gpu.py -k "($k) and not ($EVAL_TESTS)" \
    >"$b" 2>&1
  local rb=$?
  wait "$pid"; local ra=$?
  echo "# the evaluation half: -k \"($k) and ($EVAL_TESTS)\""; cat "$a"
  echo "# the other half: -k \"($k) and not ($EVAL_TESTS)\""; cat "$b"
  # pytest exits 5 when -k selects nothing: fine for one half (a short call's -k), not for both
  if [ "$ra" = 5 ] && [ "$rb" = 5 ]; then return 5; fi
  [ "$ra" = 5 ] && ra=0
  [ "$rb" = 5 ] && rb=0
  return $(( ra > rb ? ra : rb ))
}

IMAGENET_IMAGES=${IMAGENET_IMAGES:-5000}
IMAGENET_JPEGS=$OUT/imagenet-jpegs-$IMAGENET_IMAGES
IMAGENET_JPEGS_PID=""

SUMMARY=()
CURRENT="(before the first stage)"
quick_target() {  # the whole `quick` command, setup included, as a target (NOT MET if a stage was skipped/stopped)
  [ "$QUICK" = 1 ] || return 0
  local whole=true name="gpu_check.sh quick, the whole command (setup + stages)"
  if grep -q "skipped\|stopped" <<<"${SUMMARY[*]}"; then whole=false; name="$name, NOT ALL STAGES RAN"; fi
  local met=false took=${QUICK_END:-$SECONDS}   # stages asked for after quick's do not count
  if $whole && [ "$took" -le $((QUICK_GOAL_MIN * 60)) ]; then met=true; fi
  printf '{"targets": [{"name": "%s", "measured": %s, "goal": %s, "unit": "min", "lower_is_better": true, "met": %s}]}\n' \
    "$name" "$(awk -v s="$took" 'BEGIN { printf "%.3f", s / 60 }')" "$QUICK_GOAL_MIN" "$met" > "$TARGETS/quick.json"
}
finish() {  # the summary of the stages run so far, in the log and as JSON
  log ""; log "## summary ($(date -u '+%H:%M UTC'))"
  for line in "${SUMMARY[@]}"; do log "$line"; done
  quick_target
  if ls "$TARGETS"/*.json >/dev/null 2>&1; then
    "$PY" bench/summarize_targets.py "$TARGETS" "$SUMMARY_JSON" "${SUMMARY[@]}" 2>&1 | tee -a "$LOG"
  fi
}
# `timeout N bash bench/gpu_check.sh ...` signals the whole process group: the running stage stops, then this
on_signal() {
  SUMMARY+=("$(printf '%-34s stopped by a signal (time limit?)' "$CURRENT")")
  finish
  exit 124
}
trap on_signal TERM INT
BUDGET=${GPU_CHECK_BUDGET:-0}
stage() {  # stage NAME COMMAND...: run, log, time, remember the exit code
  local name=$1; shift
  if [ "$BUDGET" -gt 0 ] && [ "$SECONDS" -ge "$BUDGET" ]; then
    log ""; log "## $name: skipped (${SECONDS} s gone of GPU_CHECK_BUDGET=${BUDGET} s)"
    SUMMARY+=("$(printf '%-34s skipped (out of time)' "$name")")
    return 0
  fi
  CURRENT=$name
  log ""; log "## $name ($(date -u +%H:%M:%S) UTC): $*"
  local t0=$SECONDS
  "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  CURRENT="(between stages, after $name)"
  SUMMARY+=("$(printf '%-34s rc=%-3s %5ss' "$name" "$rc" $((SECONDS - t0)))")
  return "$rc"
}

for s in "${STAGES[@]}"; do
  case $s in
    tests)
      stage "tests: cuda" "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_gpu.py
      stage "tests: cuda path" "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_path.py tests/test_attacks.py \
        tests/test_train.py tests/test_methods.py tests/test_corruptions.py
      ;;
    bench)
      stage "bench: corruptions" "$PY" bench/bench_corruptions.py --device cuda
      stage "bench: fgsm (fp32, exact)" "$PY" bench/bench_fgsm.py --device cuda --data random --n 10000 \
        --batch-size 1000 --repeats 3
      stage "bench: fgsm (bf16)" "$PY" bench/bench_fgsm.py --device cuda --data random --n 10000 \
        --batch-size 1000 --repeats 3 --amp
      stage "bench: train" "$PY" bench/bench_train.py --device cuda --data "folder:$CIFAR"
      stage "bench: pipeline" "$PY" bench/bench_pipeline.py --device cuda --data "folder:$CIFAR"
      stage "bench: ddp (1 GPU: torchrun vs plain)" "$PY" bench/bench_ddp.py --device cuda --nproc 1 --torchrun-one \
        --arch wrn-28-2 --steps 50 --warmup 10
      ;;
    quick-tests)   # (the tests of --compile's TorchInductor steps, which compile for a while: in quick-step)
      if [[ " ${STAGES[*]} " == *" quick-eval "* ]] && [ -z "$IMAGENET_JPEGS_PID" ]; then
        # the ImageNet benchmark's JPEGs, made on 8 threads while the tests run (no stage is timed meanwhile);
        # the imagenet stage waits for them (9 s on the seventh run's machine when made in the stage itself)
        nice "$PY" bench/bench_imagenet.py --make-folder-only --folder "$IMAGENET_JPEGS" --images "$IMAGENET_IMAGES" \
          --threads 8 >"$OUT/imagenet-jpegs.log" 2>&1 &
        IMAGENET_JPEGS_PID=$!
      fi
      stage "tests: cuda (two halves side by side)" cuda_tests_side_by_side "${GPU_TESTS_K:-not inductor}"
      ;;
    quick-train)
      stage "bench: train (quick)" "$PY" bench/bench_train.py --device cuda --data "folder:$CIFAR" --workers 12 \
        --warmup 30 --steps 150 --ref-steps 60 --variants "${TRAIN_VARIANTS:-default}" \
        --json "$TARGETS/train.json"
      ;;
    quick-step)   # not in quick: a long run's default step (compiled: 23-68 s up front), against a short run's
      stage "tests: cuda (inductor)" "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_gpu.py \
        -k "inductor"
      stage "bench: train (--compile)" "$PY" bench/bench_train.py --device cuda --data "folder:$CIFAR" --workers 12 \
        --warmup 30 --steps 150 --ref-steps 50 --variants graphs-inductor-streams-prefetch,default,graphs-inductor-streams \
        --json "$TARGETS/train-compile.json"
      stage "bench: train baseline (--compile)" "$PY" bench/bench_train.py --device cuda --data "folder:$CIFAR" \
        --workers 12 --method baseline --warmup 30 --steps 300 --ref-steps 30 --no-ratio \
        --variants graphs-inductor-prefetch,default,graphs-inductor --json "$TARGETS/train-baseline-compile.json"
      mkdir -p "$OUT/profiles"
      for mode in graphs graphs-streams graphs-inductor-streams; do
        stage "bench: profile a GradAug step ($mode)" "$PY" bench/profile_train.py --device cuda --mode $mode \
          --json "$OUT/profiles/train-$mode.json"
      done
      for mode in graphs graphs-inductor; do   # the baseline's <= 3 ms: where its 3.6 ms go, and what compiling saves
        stage "bench: profile a baseline step ($mode)" "$PY" bench/profile_train.py --device cuda --method baseline \
          --mode $mode --json "$OUT/profiles/train-baseline-$mode.json"
      done
      ;;
    quick-baseline)   # not in quick (~1 min): the baseline's captured step in NCHW and in fp32 against the default
      mkdir -p "$OUT/variants"
      stage "bench: train baseline (layouts, precision)" "$PY" bench/bench_train.py --device cuda --data "folder:$CIFAR" \
        --workers 12 --method baseline --warmup 30 --steps 300 --ref-steps 30 --no-ratio \
        --variants default,graphs-nchw,graphs-fp32 --json "$OUT/variants/train-baseline.json"
      ;;
    quick-fp16)   # not in quick (~3 min): the -fp16 steps and fit(prefetch=True), alone and together, against the default
      mkdir -p "$OUT/profiles"
      stage "tests: cuda (fp16 step, prefetch)" "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_gpu.py \
        -k "fp16 or prefetch"
      stage "bench: train baseline (fp16)" "$PY" bench/bench_train.py --device cuda --data "folder:$CIFAR" \
        --workers 12 --method baseline --warmup 30 --steps 300 --ref-steps 30 --loader-batches 0 --no-ratio \
        --variants default,graphs,graphs-fp16,graphs-fp16-prefetch --json "$TARGETS/train-baseline-fp16.json"
      stage "bench: train gradaug (fp16)" "$PY" bench/bench_train.py --device cuda --data "folder:$CIFAR" \
        --workers 12 --warmup 30 --steps 150 --ref-steps 30 --loader-batches 0 --no-ratio \
        --variants default,graphs-streams,graphs-streams-fp16,graphs-streams-fp16-prefetch \
        --json "$TARGETS/train-gradaug-fp16.json"
      stage "bench: profile a baseline step (graphs-fp16)" "$PY" bench/profile_train.py --device cuda \
        --method baseline --mode graphs-fp16 --json "$OUT/profiles/train-baseline-graphs-fp16.json"
      ;;
    quick-warm-up-batch)   # not in quick (~50 s): the CIFAR-10-C stage cold with its warm-up on the grid's batch
      mkdir -p "$OUT/variants"
      stage "bench: pipeline (warm-up on 5,000 images)" "$PY" bench/bench_pipeline.py --device cuda \
        --data "folder:$CIFAR" --steps 1000 --corrupt-warm-up-batch 5000 --json "$OUT/variants/pipeline-warm-up-batch.json"
      ;;
    quick-trace)   # not in quick (~1 min): the CIFAR-10-C stage cold under the profiler, every thread
      mkdir -p "$OUT/variants"
      stage "bench: pipeline (cold corrupt stage traced)" "$PY" bench/bench_pipeline.py --device cuda \
        --data "folder:$CIFAR" --steps 1000 --corrupt-trace "$OUT/variants/corrupt-cold-trace.json.gz" \
        --json "$OUT/variants/pipeline-trace.json"
      ;;
    quick-sync-each)   # not in quick (~1 min): the CIFAR-10-C stage cold, timed with a sync at each report
      mkdir -p "$OUT/variants"
      stage "bench: pipeline (cold corrupt stage, sync at each report)" "$PY" bench/bench_pipeline.py --device cuda \
        --data "folder:$CIFAR" --steps 1000 --corrupt-sync-each-report --json "$OUT/variants/pipeline-sync-each.json"
      ;;
    quick-pipeline)
      stage "bench: pipeline (quick)" "$PY" bench/bench_pipeline.py --device cuda --data "folder:$CIFAR" --steps 1000 \
        --corrupt-batch-sizes 5000 ${PIPELINE_SWITCHES:+--corrupt-switches "$PIPELINE_SWITCHES"} \
        --json "$TARGETS/pipeline.json"
      ;;
    quick-accuracy)   # not in quick (~3.5 min): test accuracy of captured vs eager GradAug-semi, 1,000 steps
      stage "bench: accuracy captured vs eager" "$PY" bench/bench_pipeline.py --device cuda --data "folder:$CIFAR" \
        --steps 1000 --accuracy-only --accuracy-seeds "${ACCURACY_SEEDS:-0,1,2}" --eager-seeds "${EAGER_SEEDS:-1}" \
        --accuracy-modes "${ACCURACY_MODES:-default,eager}" --json "$TARGETS/accuracy.json"
      ;;
    quick-eval)
      stage "bench: fgsm (fp32, deterministic, exact)" "$PY" bench/bench_fgsm.py --device cuda --data random --n 10000 \
        --batch-size 1000 --json "$TARGETS/fgsm.json"
      stage "bench: corruptions 224 px" "$PY" bench/bench_corruptions.py --device cuda --no-reference --no-cpu \
        --sizes 224 --severities 3 --json "$TARGETS/corruptions.json"
      if [ -n "$IMAGENET_JPEGS_PID" ]; then   # (a failure there: the stage makes them itself)
        wait "$IMAGENET_JPEGS_PID" || log "note: making the ImageNet JPEGs beforehand failed ($OUT/imagenet-jpegs.log)"
        IMAGENET_JPEGS_PID=""
      fi
      stage "bench: imagenet (quick)" "$PY" bench/bench_imagenet.py --device cuda --arch resnet50 \
        --images "$IMAGENET_IMAGES" --folder "$IMAGENET_JPEGS" --corruptions all --severities 3 --batch-size 256 \
        --ref-images "${IMAGENET_REF_IMAGES:-140}" --ref-batch-size 1 --workers 14 --json "$TARGETS/imagenet.json"
      ;;
    quick-cold)   # not in quick (~2.5 min): the corrupt job in fresh processes: shipped and one change each (bench_corrupt_cold)
      stage "bench: corrupt in fresh processes" "$PY" bench/bench_corrupt_cold.py --device cuda --data "folder:$CIFAR" \
        --repeats 2 --json "$TARGETS/cold.json"
      ;;
    quick-eval-compile)   # not in quick: is --compile worth making the evaluation default on CUDA?
      stage "bench: imagenet (quick, --compile)" "$PY" bench/bench_imagenet.py --device cuda --arch resnet50 \
        --images "$IMAGENET_IMAGES" --folder "$IMAGENET_JPEGS" --corruptions all --severities 3 --batch-size 256 \
        --no-reference \
        --compile --json "$TARGETS/imagenet-compile.json"
      stage "bench: pipeline, fgsm + corrupt with and without --compile" "$PY" bench/bench_pipeline.py --device cuda \
        --data "folder:$CIFAR" --steps 100 --compile-eval
      ;;
    quick-kernels)   # not in quick: which launch settings the Triton kernels should ship with
      stage "tests: Triton kernels on CUDA" "$PY" -m pytest -q -m cuda tests/test_gpu.py -k "triton or spatter"
      stage "bench: Triton kernels, launch settings" "$PY" bench/bench_corruptions.py --device cuda --no-reference \
        --sizes 224 --severities 3 --corruptions jpeg_compression,glass_blur,spatter --kernel-settings \
        --json "$TARGETS/kernels.json"
      ;;
    quick-profile)
      stage "bench: profile slow corruptions + ImageNet-C cell" "$PY" bench/profile_corruptions.py --device cuda \
        --size 224 --severity 3 --batches 5 --eval-cell --arch resnet50 --images 1024 \
        --network-variants plain,fused,fused+tuned,fused+graphs \
        --json "$TARGETS/profile.json"
      stage "bench: profile a CIFAR-10-C cell (32 px, WRN-28-2)" "$PY" bench/profile_corruptions.py --device cuda \
        --size 32 --severity 3 --batch-size 5000 --batches 4 --corruptions all --eval-cell --arch wrn-28-2 \
        --images 10000 \
        --network-variants plain,fused,fused+tuned,fused+graphs,compiled \
        --json "$TARGETS/profile-cifar.json"
      ;;
    quick-end)   # (internal) where `quick`'s own stages end: its time as a target stops here
      QUICK_END=$SECONDS
      ;;
    demo)
      rm -rf "$OUT/demo"
      stage "demo" "${RK[@]}" demo --device cuda --out "$OUT/demo" --no-progress
      ;;
    paper)   # the training runs in chunks of $PAPER_CHUNK steps (default 6,000: ~1.5 min on an H100), each
             # ending with a checkpoint, so a call that runs out of time loses nothing; the next call resumes
      RUN=$OUT/cifar10-250-gradaug-s0
      CHUNK=${PAPER_CHUNK:-6000}
      while :; do
        if [ ! -f "$RUN/checkpoint.pt" ]; then
          stage "paper: train (default length, first $CHUNK steps)" "${RK[@]}" train --dataset "folder:$CIFAR" \
            --labels 250 --method gradaug --out "$RUN" --no-progress --stop-at "$CHUNK" || break
          continue
        fi
        DONE=$("$PY" -c "import sys, torch; c = torch.load(sys.argv[1], weights_only=True); print('done' if c['finished'] else c['step'])" "$RUN/checkpoint.pt") || break
        [ "$DONE" = done ] && break
        stage "paper: train (resumed at step $DONE)" "${RK[@]}" train --resume "$RUN" --device cuda --no-progress \
          --stop-at $((DONE + CHUNK)) || break
      done
      stage "paper: corrupt 19x5 x 10,000" "${RK[@]}" corrupt "$RUN" --device cuda --force --no-progress
      stage "paper: fgsm 0.05..0.25 x 10,000" "${RK[@]}" fgsm "$RUN" --device cuda --force --no-progress
      ;;
    *) log "error: unknown stage $s (use quick (= quick-tests quick-train quick-pipeline quick-eval), quick-profile, quick-step, quick-accuracy, quick-eval-compile, quick-kernels, quick-cold, quick-baseline, quick-warm-up-batch, quick-trace, quick-sync-each, tests, bench, demo, paper)"; exit 2 ;;
  esac
done

finish
grep -q "rc=[1-9]" <<<"${SUMMARY[*]}" && exit 1 || exit 0
