#!/usr/bin/env bash
# Runs the benchmark as several queues side by side on one machine (e.g. one
# GPU with many CPU cores), stops them at a deadline, and packs the small
# result files of every run (finished or not) into one archive.
#
#   bash tools/run_queues.sh [DEADLINE_SECONDS] [PACK_DIR]
#
# Environment: PROFILE (cpu), DEVICE (cuda; overrides the profile's
# MODEL.DEVICE, recorded in each run), ROOT (output/benchmark), PYTHON
# (python3), QUEUES (which of the queues below, in the order to start them),
# MAX_PARALLEL (9: queues running at a time), OMP_NUM_THREADS (1), and
# VOTING_DET_COMMIT (the commit of a code copy without .git, recorded in each
# run as "<commit> (copy)").
# Every queue is `tools/benchmark.py` on its own (method, fold) list, so runs
# resume from their checkpoints when the script is started again on the same
# machine; no two queues share a run folder (Proposed's LCF stage is trained
# inside its own run). The pack holds run.json, starts.json, run_config.yaml,
# log.txt, the evaluations' JSON files and the training metrics, never weights.
set -u
set +m  # no job control: each `setsid` below then runs in the child itself, whose pid is the new group's id
DEADLINE="${1:-540}"
PACK="${2:-output/packs}"
PROFILE="${PROFILE:-cpu}"
DEVICE="${DEVICE:-cuda}"
ROOT="${ROOT:-output/benchmark}"
PYTHON="${PYTHON:-python3}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PYTHONUNBUFFERED=1
mkdir -p "$PACK" "$ROOT/queue_logs"

declare -A Q=(
  [p0]="--folds 0 --methods proposed"
  [p1]="--folds 1 --methods proposed"
  [p2]="--folds 2 --methods proposed"
  [lcf]="--folds 0 1 2 --methods lcf"
  [ls]="--folds 0 1 2 --methods ls"
  [fpn18]="--folds 0 1 2 --methods fpn_R18"
  [c418]="--folds 0 1 2 --methods faster_rcnn_R18"
  [fpn50]="--folds 0 1 2 --methods fpn_R50"
  [c450]="--folds 0 1 2 --methods faster_rcnn_R50"
  [abl_k]="--folds 0 --methods proposed_K32 proposed_K64 proposed_K256"
  [abl_o]="--folds 0 --methods proposed_O2 proposed_O6"
)
QUEUES="${QUEUES:-p0 p1 p2 lcf ls fpn18 c418 fpn50 c450 abl_k abl_o}"

MAX_PARALLEL="${MAX_PARALLEL:-9}"
for q in $QUEUES; do [[ -n "${Q[$q]:-}" ]] || { echo "unknown queue $q (known: ${!Q[*]})" >&2; exit 2; }; done
start=$(date +%s)
pending=($QUEUES)
running=()
while :; do
  still=()
  for p in "${running[@]}"; do kill -0 "$p" 2>/dev/null && still+=("$p"); done
  running=("${still[@]}")
  # start the next queues, in the order given, up to MAX_PARALLEL at a time
  while (( ${#running[@]} < MAX_PARALLEL && ${#pending[@]} > 0 )); do
    q="${pending[0]}"; pending=("${pending[@]:1}")
    # shellcheck disable=SC2086
    setsid "$PYTHON" tools/benchmark.py --profile "$PROFILE" ${Q[$q]} --root "$ROOT" MODEL.DEVICE "$DEVICE" \
      >> "$ROOT/queue_logs/$q.log" 2>&1 < /dev/null &
    running+=($!)
    echo "$(( $(date +%s) - start )) s: queue $q (pid $!): ${Q[$q]}"
  done
  now=$(date +%s)
  if (( ${#running[@]} == 0 )); then echo "all queues ended after $((now - start)) s"; break; fi
  if (( now - start >= DEADLINE )); then
    echo "deadline ${DEADLINE} s: stopping ${#running[@]} queue(s) (their runs resume from the last checkpoint); not started: ${pending[*]:-none}"
    for p in "${running[@]}"; do kill -KILL -- "-$p" 2>/dev/null; done
    sleep 2
    break
  fi
  sleep 5
done

for q in $QUEUES; do
  log="$ROOT/queue_logs/$q.log"
  if [[ -f "$log" ]]; then echo "== $q: $(grep -c 'finished in' "$log") run(s) finished; last lines:"; tail -n 2 "$log"
  else echo "== $q: not started"; fi
done
# the small files of every run (no weights, no event files): results, then logs
(cd "$ROOT" && find . \( -name run.json -o -name starts.json -o -name wall_seconds.json -o -name run_config.yaml \
   -o -path '*/eval/*.json' \) -type f -print0 | tar --null -czf - -T -) > "$PACK/runs.tgz"
(cd "$ROOT" && find . \( -name log.txt -o -name metrics.json -o -path '*/queue_logs/*' \) -type f -print0 \
   | tar --null -czf - -T -) > "$PACK/logs.tgz"
ls -la "$PACK"
