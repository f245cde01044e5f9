"""How examples/dblp_quad/data/ was made from the upstream DBLP-QuAD train and valid splits (run once, kept for provenance).

    python examples/dblp_quad/prepare_data.py UPSTREAM_DIR   # a folder with the upstream train.jsonl and valid.jsonl

Every row and every field is kept unchanged; only the order changes. Rows are interleaved by query type (seeded
random order within each type, then one row of each type in turn), so the first N rows of either file are a
balanced slice of all ten types: `data.limit` (training) and `data.n` (evaluation) take such slices, which is how
`make demo` uses the same two files as the full recipe (configs/dblp-quad-full.yaml, docs/benchmarks.md).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data"


def interleave_by_type(rows: list[dict], seed: int) -> list[dict]:
    by_type: dict[str, list[dict]] = {}
    for row in rows:
        by_type.setdefault(row["query_type"], []).append(row)
    rng = random.Random(seed)
    queues = []
    for query_type in sorted(by_type):
        group = sorted(by_type[query_type], key=lambda r: r["id"])
        rng.shuffle(group)
        queues.append(group)
    out = []
    for i in range(max(map(len, queues))):
        out += [q[i] for q in queues if i < len(q)]
    return out


def main(upstream: Path) -> None:
    for split, seed in (("train", 0), ("valid", 1)):
        rows = [json.loads(line) for line in (upstream / f"{split}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
        ordered = interleave_by_type(rows, seed)
        assert sorted(r["id"] for r in ordered) == sorted(r["id"] for r in rows)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered)
        (OUT / f"{split}.jsonl").write_text(text, encoding="utf-8")
        print(f"{OUT / split}.jsonl: {len(ordered)} rows")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
