"""tunesmith: adapt a pretrained LLM to a domain, and prove with numbers whether it was worth it."""

__version__ = "0.1.0"
