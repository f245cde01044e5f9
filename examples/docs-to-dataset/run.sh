#!/usr/bin/env bash
# Documents → chunks → anonymized → teacher-written Q/A pairs → augmented → leak-free split.
# Usage: examples/docs-to-dataset/run.sh [--train]   (--train: also a 4-step LoRA run on the result)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tunesmith="${TUNESMITH:-$root/.venv/bin/tunesmith}"
cd "$here"

"$tunesmith" data ingest prep.yaml -i docs -o work/chunks.jsonl
# Anonymize before generation, so personal data never reaches the teacher (matters for hosted teachers).
"$tunesmith" data anonymize prep.yaml -i work/chunks.jsonl -o work/chunks.anon.jsonl --mapping private/pii-mapping.json
"$tunesmith" data generate prep.yaml -i work/chunks.anon.jsonl -o work/pairs.jsonl
"$tunesmith" data augment prep.yaml -i work/pairs.jsonl -o work/augmented.jsonl
"$tunesmith" data split prep.yaml -i work/augmented.jsonl -o work/split
"$tunesmith" data stats -i work/split/train.jsonl --field topic --field augmented

if [[ "${1:-}" == "--train" ]]; then
  cd "$root"
  "$tunesmith" train examples/docs-to-dataset/train.yaml
fi
