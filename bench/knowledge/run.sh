#!/usr/bin/env bash
# The documents → knowledge benchmark, end to end (docs/knowledge.md has the figures this produced).
#   bench/knowledge/run.sh           # set a: prepare, train, evaluate on the test questions (base, RAG, tuned)
#   bench/knowledge/run.sh valid     # ...on the validation questions instead (for tuning)
#   SET=b bench/knowledge/run.sh     # set b: the check set written by another generator (never tuned on)
# On one CPU thread: set a about 40 minutes (training ~27, evaluation ~10), set b about 17 (training ~12).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
tunesmith="${TUNESMITH:-$root/.venv/bin/tunesmith}"
python="${PYTHON:-$root/.venv/bin/python}"
set="${SET:-a}"
split="${1:-test}"
data="bench/knowledge/data/$set"
work="runs/knowledge/$set"
cd "$root"

"$tunesmith" data ingest bench/knowledge/prep.yaml -i "$data/docs" -o "$work/chunks.jsonl"
"$tunesmith" data generate bench/knowledge/prep.yaml -i "$work/chunks.jsonl" -o "$work/pairs.jsonl"
# No test (or validation) question's phrasing may occur in the training prompts: checked, not assumed.
"$python" bench/knowledge/heldout.py --facts "$data/facts.jsonl" --questions "$data/test.jsonl" --train "$work/pairs.jsonl"

if [[ "$set" == a ]]; then
  "$tunesmith" train bench/knowledge/train.yaml --set output.dir="runs/knowledge/$set-tuned"
else  # no validation questions for b: the same recipe, without the probe
  "$tunesmith" train bench/knowledge/train.yaml --set data.train="$work/pairs.jsonl" --set data.valid=null \
    --set probe=null --set output.dir="runs/knowledge/$set-tuned"
fi
"$tunesmith" eval bench/knowledge/eval.yaml --set data.test="$data/$split.jsonl" --set data.train="$work/pairs.jsonl" \
  --set retrieval.corpus="$work/chunks.jsonl" --set report.dir="runs/knowledge/eval-$set-$split" \
  --set "variants=[{kind: base}, {kind: rag}, {kind: tuned, run: runs/knowledge/$set-tuned}, {kind: tuned, run: runs/knowledge/$set-tuned, rag: true}]"
