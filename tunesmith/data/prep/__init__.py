"""Data preparation: documents → chunks → teacher-written Q/A pairs → augmented → anonymized → split.

Every step reads and writes JSONL and leaves a `<output>.manifest.json` beside its output (counts, the
config it ran with, the sha256 of every input and output), so steps chain, skip work that is already
up to date, and can be inspected afterwards.
"""
