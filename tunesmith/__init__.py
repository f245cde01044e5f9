"""tunesmith: adapt a pretrained LLM to a domain, and prove with numbers whether it was worth it."""

import warnings

__version__ = "0.1.0"

# peft 0.21 reads `model.is_gradient_checkpointing`, which transformers 5 deprecates with a FutureWarning on every
# wrap and load: noise for a tunesmith user, who can do nothing about it. Only that message is hidden.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
