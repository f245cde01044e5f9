#!/usr/bin/env bash
# Documents → chunks → anonymized → teacher-written Q/A pairs → augmented → leak-free split.
# Usage: examples/docs-to-dataset/run.sh [--train]   (--train: also a 4-step LoRA run on the result)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tunesmith="${TUNESMITH:-$root/.venv/bin/tunesmith}"
cd "$here"

"$tunesmith" data ingest docs -o work/chunks.jsonl -c prep.yaml
# Anonymize before generation, so personal data never reaches the teacher (matters for hosted teachers).
"$tunesmith" data anonymize -i work/chunks.jsonl -o work/chunks.anon.jsonl -c prep.yaml --mapping private/pii-mapping.json
"$tunesmith" data generate -i work/chunks.anon.jsonl -o work/pairs.jsonl -c prep.yaml
"$tunesmith" data augment -i work/pairs.jsonl -o work/augmented.jsonl -c prep.yaml
"$tunesmith" data split -i work/augmented.jsonl -o work/split -c prep.yaml
"$tunesmith" data stats work/split/train.jsonl --field topic --field augmented

if [[ "${1:-}" == "--train" ]]; then
  cd "$root"
  "$tunesmith" train examples/docs-to-dataset/train.yaml
fi
