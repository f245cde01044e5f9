#!/usr/bin/env bash
# DBLP-QuAD on a GPU, end to end in one invocation: for each recipe, train (full fine-tuning, the probe keeping the
# best step), then score all 1,000 validation rows; reports, training logs and timings go to OUT as one archive.
# This is the command behind docs/benchmarks.md's "DBLP-QuAD on a GPU" figures:
#   bench/dblp_quad_gpu.sh OUT [SECONDS]
# SECONDS (default 3600) is a wall-clock budget: a recipe starts only if the time left would fit it (a device
# lease sets it lower). Extra
# `--set` overrides for both commands can be given in TRAIN_SET and EVAL_SET (the CPU smoke test uses them);
# ONLY=relations (or a comma-separated list) picks recipes; PROFILE=1 first profiles a few full fine-tuning steps
# (bench/profile_step.py: GPU time by kind of op beside the wall time of a step) into OUT/profile.txt;
# THROUGHPUT=N first runs bench/train_throughput.py (tunesmith vs Trainer + peft, LoRA and full, 1,000 rows, N
# repeats, both on the GPU) into OUT/throughput.txt.
set -u -o pipefail
OUT=${1:?usage: bench/dblp_quad_gpu.sh OUT [SECONDS]}
BUDGET=${2:-3600}
PY=${PYTHON:-python3}
START=$(date +%s)
mkdir -p "$OUT" runs/gpu-bench
exec > >(tee -a "$OUT/log.txt") 2>&1
elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(date +%s) + START )); }
# What comes back: the eval reports and each run's logs and configs, never the weights. Written after each recipe,
# so a later recipe cut off by the budget loses only itself.
pack() {
  tar -czf "$OUT/results.tar.gz.tmp" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.bin' \
    --exclude='checkpoints' --exclude='best' --exclude='final' runs/gpu-bench && mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz"
}
"$PY" - <<'PY'
import platform, torch, transformers
print("python", platform.python_version(), "torch", torch.__version__, "transformers", transformers.__version__,
      "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
# name  train config  eval prompt  seconds a recipe needs (train + eval) on one H200: entities measured on
# 2026-12-04 (379 + 146 s), relations estimated from it (half the epochs)
RECIPES=(
  "relations|configs/dblp-quad-gpu-relations.yaml|{question}\\nEntities: {entities}\\nRelations: {relations}|360"
  "entities|configs/dblp-quad-gpu.yaml|{question}\\nEntities: {entities}|540"
)
if [[ -n "${PROFILE:-}" ]]; then
  echo "== profile ($(elapsed) s)"
  timeout "$(left)" "$PY" bench/profile_step.py --method full --rows 8 --steps 5 --warmup 3 --examples 500 \
    >"$OUT/profile.txt" 2>&1 || echo "== profile failed"
  grep -A 9 "per step" "$OUT/profile.txt"
fi
if [[ -n "${THROUGHPUT:-}" ]]; then
  echo "== throughput ($(elapsed) s)"
  timeout "$(left)" "$PY" bench/train_throughput.py --methods lora,full --repeats "$THROUGHPUT" --examples "${THROUGHPUT_EXAMPLES:-1000}" \
    --no-docs --out runs/gpu-bench/throughput >"$OUT/throughput.txt" 2>&1 || echo "== throughput failed"
  grep -A 8 "^| method" "$OUT/throughput.txt"
  pack
fi
for recipe in "${RECIPES[@]}"; do
  IFS='|' read -r name config prompt need <<<"$recipe"
  if [[ -n "${ONLY:-}" && ",$ONLY," != *",$name,"* ]]; then continue; fi
  if (( $(elapsed) + need > BUDGET )); then echo "== $name: skipped, $(elapsed) s of $BUDGET s used"; continue; fi
  run=runs/gpu-bench/$name
  t0=$(date +%s)
  echo "== $name: train $config ($(elapsed) s)"
  # shellcheck disable=SC2086
  timeout "$(left)" "$PY" -m tunesmith.cli train "$config" --set output.dir="$run" ${TRAIN_SET:-} || { echo "== $name: train failed"; continue; }
  t1=$(date +%s)
  echo "== $name: eval ($(elapsed) s)"
  # shellcheck disable=SC2086
  timeout "$(left)" "$PY" -m tunesmith.cli eval examples/dblp_quad/eval.yaml --set data.n=null --set forgetting.enabled=false \
    --set "data.template.prompt=\"$prompt\"" --set "variants=[{kind: tuned, run: $run}]" \
    --set generation.batch_size=250 --set report.dir="$run-eval" ${EVAL_SET:-} || echo "== $name: eval failed"
  t2=$(date +%s)
  echo "== $name: train $((t1 - t0)) s, eval $((t2 - t1)) s"
  pack
  echo "{\"recipe\": \"$name\", \"config\": \"$config\", \"train_s\": $((t1 - t0)), \"eval_s\": $((t2 - t1))}" >>"$OUT/timings.jsonl"
done
pack
echo "== done in $(elapsed) s"
