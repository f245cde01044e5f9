"""The bottleneck adapter layer of `tunesmith.methods.adapter` (Houlsby et al. 2019; Pfeiffer et al. 2020).

A frozen Linear whose output y becomes y + up(act(down(y))): down-projection to a narrow bottleneck, a
non-linearity, up-projection back, zero-initialised so that a new adapter leaves the model unchanged.
"""

from __future__ import annotations

import torch.nn as nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class Bottleneck(nn.Module):
    def __init__(self, width: int, bottleneck: int, non_linearity: str):
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, y):
        return y + self.up(self.act(self.down(y)))


class AdaptedLinear(nn.Module):
    """A Linear (kept as `base_layer`, the name peft uses for wrapped layers) with an adapter on its output."""

    def __init__(self, base_layer: nn.Linear, bottleneck: int, non_linearity: str):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = Bottleneck(base_layer.out_features, bottleneck, non_linearity).to(base_layer.weight.device)

    def forward(self, x):
        return self.adapter(self.base_layer(x))
