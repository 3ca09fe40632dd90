#!/usr/bin/env bash
# The GPU path end to end, on a machine with one GPU or more: a tiny bf16 model on text prompts, the
# learner under ZeRO-1 and ZeRO-3, both weight-sync routes, engines colocated with the learner
# (sleeping during updates) and not. Each case is a short `rlreg train`; the script prints what each
# measured, a PASS/FAIL line per case and one overall line, and exits non-zero if any case failed.
#
#   RLREG_DEVICE=gpu make setup && bash scripts/gpu_check.sh    # about 2-4 minutes per case
#   bash scripts/gpu_check.sh --dry-run                         # any machine: configs and placement only
#
# A case passes when the run finishes, its test RMSE is finite, and after every weight sync the
# engine's logprobs of its samples match the learner's (the RL log's importance ratio stays within
# 2e-2 of 1: bf16 on both sides). Learner ranks: two where the GPUs allow, else one; NCCL refuses
# two ranks of one group on the same GPU, so on one GPU the "separate" cases share it by fractions
# (ray.learner_gpus / ray.rollout_gpus = 0.5) without sleeping, and the colocated ones by sleep mode.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
VENV=${RLREG_VENV:-.venv}
PY=$VENV/bin/python
OUT=${RLREG_GPU_CHECK_DIR:-runs/gpu_check}
export RLREG_DEVICE=gpu
if [[ $DRY == 1 ]]; then GPUS=${RLREG_GPU_CHECK_GPUS:-1}; else GPUS=$(nvidia-smi -L 2>/dev/null | wc -l); fi
if [[ $GPUS -lt 1 ]]; then echo "gpu_check: no GPU visible (nvidia-smi -L lists none); --dry-run checks the plan only"; exit 2; fi

BASE=(data.input=text model.max_positions=128 model.dtype=bfloat16 sft.steps=40 sft.eval_every=20 rl.steps=4 rl.eval_every=0
      rl.batch_size=8 rl.group_size=8 rl.advantage=grpo eval.samples=8 eval.baselines=[]
      engine.gpu_memory_utilization=0.3 ray.actor_start_timeout_s=900)
if [[ $GPUS -ge 3 ]]; then SEPARATE=(learner.world_size=2)
elif [[ $GPUS -eq 2 ]]; then SEPARATE=(learner.world_size=1)
else SEPARATE=(learner.world_size=1 ray.learner_gpus=0.5 ray.rollout_gpus=0.5); fi
RANKS=$(( GPUS >= 2 ? 2 : 1 ))
COLOCATED=(ray.colocate=true learner.world_size=$RANKS rl.rollout_workers=$RANKS)

failed=0
mkdir -p "$OUT"
for zero in 1 3; do for route in object_store collective; do for placement in separate colocated; do
  name="zero${zero}-${route}-${placement}"
  if [[ $placement == separate ]]; then extra=("${SEPARATE[@]}"); else extra=("${COLOCATED[@]}"); fi
  args=(train examples/quickstart.yaml "${BASE[@]}" "${extra[@]}" learner.zero_stage=$zero sync.route=$route
        "run_dir=$OUT/$name")
  if [[ $DRY == 1 ]]; then
    echo "== $name (dry run)"
    if ! "$VENV/bin/rlreg" "${args[@]}" --dry-run; then echo "FAIL $name: the config or its plan was refused"; failed=1; fi
    continue
  fi
  echo "== $name"
  started=$(date +%s)
  if ! "$VENV/bin/rlreg" "${args[@]}" > "$OUT/$name.log" 2>&1; then
    echo "FAIL $name: rlreg train exited non-zero after $(( $(date +%s) - started )) s (log: $OUT.$name.log)"; failed=1; continue
  fi
  "$PY" - "$OUT/$name" "$name" <<'EOF' || failed=1
import json, math, sys
from pathlib import Path
run, name = Path(sys.argv[1]), sys.argv[2]
metrics = json.loads((run / "metrics.json").read_text())
steps = [json.loads(line) for line in (run / "rl_log.jsonl").read_text().splitlines() if line.strip()]
drift = max(max(abs(s["ratio_mean"] - 1), abs(s["ratio_max"] - 1)) for s in steps if "ratio_mean" in s)
rmse = metrics["test"]["rmse"]["value"] if isinstance(metrics["test"]["rmse"], dict) else metrics["test"]["rmse"]
sync = sum(s.get("time_sync", 0) for s in steps) / max(1, len(steps))
ok = math.isfinite(rmse) and drift < 2e-2
print(f"{'PASS' if ok else 'FAIL'} {name}: test RMSE {rmse:.4g}, engine/learner ratio drift {drift:.2e}, "
      f"sync {sync:.3f} s/step, stages {metrics.get('seconds', {})}")
sys.exit(0 if ok else 1)
EOF
done; done; done
if [[ $failed == 0 ]]; then echo "gpu_check: PASS (${GPUS} GPU(s)$([[ $DRY == 1 ]] && echo ', dry run'))"
else echo "gpu_check: FAIL"; fi
exit $failed
