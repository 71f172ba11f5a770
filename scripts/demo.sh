#!/usr/bin/env bash
# `make demo`: build the synthetic set, train the `demo` preset with `accelerate launch` (about six minutes on
# two CPU cores), evaluate it next to the trivial baselines and the attribute oracles, and check that the saved
# model loads with AutoModel(trust_remote_code=True). Everything lands in $DEMO_OUTPUT (default demo_output/);
# re-running replaces it. Exits non-zero when a step fails or the model misses the demo's recall criteria.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${DEMO_OUTPUT:-demo_output}"
case "$OUT" in /* | ./* | ../*) ;; *) OUT="./$OUT" ;; esac  # `org/name`-shaped relative paths read as Hub ids
PYTHON="${PYTHON:-python}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
started=$(date +%s)

echo "== 1/3 building the synthetic set in $OUT/synthetic"
"$PYTHON" -m facap_dataset build synthetic --out "$OUT/synthetic" --num-images 6000 --train-triplets 5000 --hard-negatives \
    --seed 0 --overwrite
"$PYTHON" -m facap_dataset inspect "$OUT/synthetic"   # statistics, oracles and a contact sheet path

echo "== 2/3 training the demo preset (options: scripts/demo_train.yaml) into $OUT/run"
# accelerate launch sets OMP_NUM_THREADS=1 unless told otherwise (without --cpu): give torch every core.
accelerate launch --num_processes 1 --num_machines 1 --num_cpu_threads_per_process "$(nproc)" \
    --mixed_precision no --dynamo_backend no \
    train_accelerate.py --config scripts/demo_train.yaml --dataset "$OUT/synthetic" --output-dir "$OUT/run" --overwrite

echo "== 3/3 evaluating $OUT/run/best against the baselines and oracles"
status=0
# --trust-remote-code: the check loads the folder this script's training just wrote
"$PYTHON" scripts/demo_report.py --model "$OUT/run/best" --dataset "$OUT/synthetic" --output "$OUT/report.json" \
    --trust-remote-code || status=$?
echo "demo finished in $(( $(date +%s) - started )) s; model: $OUT/run/best, report: $OUT/report.json," \
     "TensorBoard: tensorboard --logdir $OUT/run/logs"
exit $status
