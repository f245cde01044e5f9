#!/usr/bin/env bash
# Documents → chunks → anonymized → fact questions (no LLM) → [--train: fine-tune, then base vs RAG vs tuned].
# Usage: examples/docs-to-dataset/run.sh [--train]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tunesmith="${TUNESMITH:-$root/.venv/bin/tunesmith}"
cd "$here"

"$tunesmith" data ingest prep.yaml -i docs -o work/chunks.jsonl
# Anonymize before generation: personal data never reaches a teacher (matters for hosted ones) nor the model.
"$tunesmith" data anonymize prep.yaml -i work/chunks.jsonl -o work/chunks.anon.jsonl --mapping private/pii-mapping.json
"$tunesmith" data generate prep.yaml -i work/chunks.anon.jsonl -o work/pairs.jsonl
"$tunesmith" data stats -i work/pairs.jsonl --field rendering --field topic

if [[ "${1:-}" == "--train" ]]; then
  cd "$root"
  "$tunesmith" train examples/docs-to-dataset/train.yaml      # ~5 minutes on 2 CPU cores
  "$tunesmith" eval examples/docs-to-dataset/eval.yaml        # → runs/eval-docs-to-dataset/report.html
fi
