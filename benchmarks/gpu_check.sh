#!/usr/bin/env bash
# Every headgame command, small, on one GPU, then the GPU benchmarks: about 5-8 minutes on an
# H100/H200 (the first step also de-quantises the packaged SmolLM2 once, 15-45 s).
#
#   benchmarks/gpu_check.sh                 # --device cuda, results in benchmarks/results/gpu/
#   benchmarks/gpu_check.sh --cpu           # the same steps on the CPU at the smallest sizes, in a temp folder
#   options: --out DIR   --model SPEC (default smollm2-135m)   --skip step1,step2   --step-timeout S (default 300)
#
# Steps: env, analyze, train, eval, fep, prune, bench_train, bench_analyze, bench_eval, and last
# the two --compile runs, train_compile and eval_compile (inductor compiles for minutes on a big
# model, so they run last with a shorter timeout; --cpu compiles tiny-llama). Each step's output
# goes to OUT/logs/STEP.log; OUT/summary.json names the device (headgame.system.device_name) and
# gives each step's rc and seconds. Every step runs even after one fails; the script exits
# non-zero when any step failed.
set -euo pipefail

cd "$(dirname "$0")/.."
MODE=gpu
OUT=""
MODEL=smollm2-135m
SKIP=""
STEP_TIMEOUT=300
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu) MODE=cpu; shift ;;
        --out) OUT="$2"; shift 2 ;;
        --model) MODEL="$2"; shift 2 ;;
        --skip) SKIP="$2"; shift 2 ;;
        --step-timeout) STEP_TIMEOUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1; see --help" >&2; exit 2 ;;
    esac
done

PY="${PYTHON:-.venv/bin/python}"
HG="${HEADGAME:-.venv/bin/headgame}"
DATA_DIR="${HEADGAME_DATA_DIR:-/work/shared/data}"
export HEADGAME_DATA_DIR="$DATA_DIR"

if [[ "$MODE" == gpu ]]; then
    DEVICE=cuda
    OUT="${OUT:-benchmarks/results/gpu}"
    THREADS=8
    MP=bf16
    PEAK_DTYPE=bfloat16
    AN=(--max-tokens 4096 --seq-len 256 --batch-size 4)
    TR=(--max-tokens 8192 --seq-len 256 --batch-size 4)
    TRC=(--max-tokens 4096 --seq-len 256 --batch-size 4)
    EV=(--tasks truthfulqa_mc2,nq_open,memotrap --limit 8 --max-new-tokens 32)
    FEP=(--max-tokens 2048 --seq-len 128 --batch-size 8 --bootstrap 20 --mcmc-steps 2000 --mcmc-burn-in 200 --ablation-tokens 256)
    PR=(--score-tokens 2048 --loss-tokens 256 --ppl-max-tokens 2048 --warmup 1 --repeats 3 --gen-repeats 1
        --gen-prompt 32 --gen-new-tokens 32 --throughput-batch 8 --throughput-seq-len 256)
    B_TRAIN=(--repeats 3 --nash-every 3)
    B_AN=(--repeats 3)
    B_EV=(--tasks truthfulqa_mc2,nq_open --limit 8)
    COMPILE_MODEL="$MODEL"
    EVC=(--tasks truthfulqa_mc2 --limit 8)
else
    DEVICE=cpu
    OUT="${OUT:-$(mktemp -d /tmp/headgame-gpu-check.XXXXXX)}"
    THREADS="${THREADS:-1}"
    MP=no
    PEAK_DTYPE=float32
    AN=(--max-tokens 128 --seq-len 32 --batch-size 2 --layers 0,-1)
    TR=(--max-tokens 512 --seq-len 32 --batch-size 2)
    TRC=(--max-tokens 256 --seq-len 32 --batch-size 2 --method ce)
    EV=(--tasks truthfulqa_mc2,nq_open --limit 2 --max-new-tokens 4)
    FEP=(--max-tokens 96 --seq-len 32 --batch-size 4 --layers 0,-1 --bootstrap 0 --mcmc-steps 0 --ablation-tokens 0)
    PR=(--score-tokens 128 --loss-tokens 64 --ppl-max-tokens 128 --ppl-max-len 64 --wikitext-window 64 --seq-len 32 --warmup 1 --repeats 5
        --gen-repeats 1 --gen-prompt 8 --gen-new-tokens 4 --throughput-batch 1 --throughput-seq-len 32 --flops-seq-len 32)
    B_TRAIN=(--repeats 3 --nash-every 3 --warmup 1 --batch-size 1 --seq-len 32)
    B_AN=(--repeats 1 --batch-size 1 --seq-len 32 --peak-n 256)
    B_EV=(--tasks truthfulqa_mc2 --limit 2 --threads "$THREADS")
    COMPILE_MODEL=tiny-llama  # inductor on SmolLM2's 30 layers takes minutes of CPU
    EVC=(--tasks truthfulqa_mc2 --limit 2)
fi
COMPILE_TIMEOUT="${COMPILE_TIMEOUT:-180}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$THREADS}"

mkdir -p "$OUT/logs"
STEPS_TSV="$OUT/logs/steps.tsv"
: > "$STEPS_TSV"
FAILED=0
T_ALL=$(date +%s.%N)

step() {  # step NAME COMMAND...: run with a timeout, log, record rc and seconds; never aborts the script
    step_t "$STEP_TIMEOUT" "$@"
}

step_t() {  # step_t SECONDS NAME COMMAND...
    local limit="$1" name="$2"; shift 2
    if [[ ",$SKIP," == *",$name,"* ]]; then
        printf '%s\tskipped\t0\n' "$name" >> "$STEPS_TSV"
        echo "== $name: skipped"
        return 0
    fi
    echo "== $name: $*"
    local t0 rc=0
    t0=$(date +%s.%N)
    timeout "$limit" "$@" > "$OUT/logs/$name.log" 2>&1 || rc=$?
    local dt
    dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    printf '%s\t%s\t%s\n' "$name" "$rc" "$dt" >> "$STEPS_TSV"
    if [[ "$rc" != 0 ]]; then
        FAILED=1
        echo "   FAILED (rc $rc, ${dt}s); last lines of $OUT/logs/$name.log:"
        tail -n 5 "$OUT/logs/$name.log" | sed 's/^/   | /'
    else
        echo "   ok (${dt}s)"
    fi
}

COMMON=(--model "$MODEL" --device "$DEVICE" --threads "$THREADS" --no-progress)

step env "$PY" -c "
import json, sys, torch
from headgame.config import resolve_device
from headgame.system import device_name, matmul_peak
dev = resolve_device('$DEVICE')
peak = matmul_peak(dev, getattr(torch, '$PEAK_DTYPE'), n=None if dev.type == 'cuda' else 512)
json.dump({'device': device_name(), 'torch': torch.__version__, 'cuda': torch.version.cuda, 'peak': peak},
          open('$OUT/env.json', 'w'), indent=1)
print(device_name(), f\"{peak['flops_per_s'] / 1e12:.2f} TFLOP/s ({peak['dtype']} matmul)\")
"
step analyze "$HG" analyze "${COMMON[@]}" "${AN[@]}" --out "$OUT/analyze"
step train "$HG" train "${COMMON[@]}" "${TR[@]}" --mixed-precision "$MP" --val-every 0 --checkpoint-every 0 --out "$OUT/train"
step eval "$HG" eval "${COMMON[@]}" "${EV[@]}" --data-dir "$DATA_DIR" --out "$OUT/eval"
step fep "$HG" fep "${COMMON[@]}" "${FEP[@]}" --out "$OUT/fep"
step prune "$HG" prune "${COMMON[@]}" "${PR[@]}" --out "$OUT/prune"
# the benchmarks: flags --device/--mixed-precision/--repeats/--out of train_overhead.py and
# --device/--no-lm-eval/--out of eval_throughput.py belong to those scripts
step bench_train "$PY" benchmarks/train_overhead.py --model "$MODEL" --device "$DEVICE" --mixed-precision "$MP" "${B_TRAIN[@]}" \
    --out "$OUT/train_overhead.json"
step bench_analyze "$PY" benchmarks/analyze_overhead.py --model "$MODEL" --device "$DEVICE" --threads "$THREADS" "${B_AN[@]}" \
    --out "$OUT/analyze_overhead.json"
step bench_eval "$PY" benchmarks/eval_throughput.py --model "$MODEL" --device "$DEVICE" --no-lm-eval "${B_EV[@]}" \
    --data-dir "$DATA_DIR" --out "$OUT/eval_throughput.json"
CCOMMON=(--model "$COMPILE_MODEL" --device "$DEVICE" --threads "$THREADS" --no-progress)
step_t "$COMPILE_TIMEOUT" train_compile "$HG" train "${CCOMMON[@]}" "${TRC[@]}" --mixed-precision "$MP" --compile --val-every 0 \
    --checkpoint-every 0 --out "$OUT/train-compile"
step_t "$COMPILE_TIMEOUT" eval_compile "$HG" eval "${CCOMMON[@]}" "${EVC[@]}" --compile --data-dir "$DATA_DIR" --out "$OUT/eval-compile"

TOTAL=$(awk -v a="$T_ALL" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
"$PY" - "$OUT" "$MODE" "$MODEL" "$TOTAL" <<'EOF'
import json, sys
from pathlib import Path

out, mode, model, total = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
steps = []
for line in (out / "logs" / "steps.tsv").read_text().splitlines():
    name, rc, seconds = line.split("\t")
    steps.append({"step": name, "rc": None if rc == "skipped" else int(rc), "skipped": rc == "skipped",
                  "seconds": float(seconds), "log": f"logs/{name}.log"})
env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
try:
    from headgame.system import device_name
    device = env.get("device") or device_name()
except Exception as exc:  # the summary is written even when headgame itself is broken
    device = f"unknown ({type(exc).__name__})"
summary = {"check": "gpu_check", "mode": mode, "model": model, "device": device, "env": env,
           "ok": all(s["rc"] == 0 for s in steps if not s["skipped"]), "total_seconds": total, "steps": steps}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(f"summary: {out / 'summary.json'} ({'ok' if summary['ok'] else 'FAILED'}, {total:.0f} s, {device})")
EOF
exit "$FAILED"
