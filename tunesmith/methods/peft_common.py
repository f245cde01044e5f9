"""What every peft-backed method shares: wrap with `get_peft_model`, save/load in peft's own format (plain peft
+ transformers load it), and the objective's new head trained and saved as a peft `modules_to_save` module."""

from __future__ import annotations

from pathlib import Path

from tunesmith.methods.base import CAUSAL_LM, Method, Task


class PeftMethod(Method):
    peft_format = True

    def peft_config(self, cfg, task: Task, model):
        """The peft config for this method's settings (task_type and modules_to_save are added here)."""
        raise NotImplementedError

    def apply(self, model, cfg, task: Task = CAUSAL_LM):
        from peft import get_peft_model

        config = self.peft_config(cfg, task, model)
        config.task_type = task.peft_task_type
        if task.head_modules:
            config.modules_to_save = list(task.head_modules)
        return get_peft_model(model, config)

    def save(self, model, directory: Path) -> None:
        model.save_pretrained(directory)

    def load(self, base, directory: Path, task: Task = CAUSAL_LM):
        from peft import PeftModel

        return PeftModel.from_pretrained(base, directory)

    def merge(self, model):
        return model.merge_and_unload()


class VirtualTokenMethod(PeftMethod):
    """Prompt, prefix and p-tuning: learned vectors before the input. Not mergeable (nothing in the weights to fold
    them into). Packed rows are refused: the virtual tokens are prepended per row, and a packed row holds several
    examples, of which only the first would see them."""

    mergeable = False

    def check(self, run_cfg) -> list[str]:
        if run_cfg.train.pack:
            return [f"method {self.name} prepends virtual tokens to every row, and a packed row holds several examples "
                    "(only the first would see them): set train.pack: false"]
        return []
