"""`tunesmith serve`: an OpenAI-compatible API over tuned runs, several adapters on one base, with guardrails."""
