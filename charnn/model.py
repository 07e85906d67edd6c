"""The recurrent language model: embedding -> N recurrent layers -> linear head.

Built on torch.nn's fused recurrent modules (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``)
so CUDA uses cuDNN and CPU uses oneDNN for batched training. No I/O here.

Regularisation while training (none of it at eval): ``dropout`` on the embeddings, between
layers and before the head; ``weight_drop`` (DropConnect on the recurrent matrices, as in
AWD-LSTM) draws one mask per batch for each layer's ``weight_hh`` and runs the same fused
kernel with the dropped matrices. The parameters themselves are never dropped: what is saved,
sampled from and stepped in numpy is always the undropped weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from charnn import arch
from charnn.config import ModelConfig

# Hidden state: an (h, c) pair for LSTM, a single tensor for GRU/RNN; each (layers, B, H).
Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

_RNN_CLASSES: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
# The fused kernels nn.LSTM/GRU/RNN.forward call; called directly with a weight list in which the
# recurrent matrices are dropped copies, so weight-drop keeps the fused path (and its speed).
_KERNELS = {"lstm": torch._VF.lstm, "gru": torch._VF.gru, "rnn": torch._VF.rnn_tanh}


class CharRNN(nn.Module):
    """A multi-layer recurrent language model over token ids."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed)
        kwargs: dict[str, Any] = {"nonlinearity": "tanh"} if config.cell == "rnn" else {}
        self.rnn = _RNN_CLASSES[config.cell](
            input_size=config.embed,
            hidden_size=config.hidden,
            num_layers=config.layers,
            # nn.RNNBase applies dropout between layers only (never after the last).
            dropout=config.dropout if config.layers > 1 else 0.0,
            batch_first=True,
            **kwargs,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, config.vocab_size)
        if config.tie_weights:
            self.head.weight = self.embed.weight  # needs embed == hidden (checked in config)
        self._init_weights()

    def _init_weights(self) -> None:
        # Unit-scale embeddings give the first layer a strong input signal from step one (a small
        # init leaves the network stuck near the unigram distribution for hundreds of steps). Tied
        # weights also act as the output layer, so they start at the usual 1/sqrt(fan_in) scale.
        std = self.config.hidden**-0.5 if self.config.tie_weights else 1.0
        nn.init.normal_(self.embed.weight, std=std)
        for name, param in self.rnn.named_parameters():
            if name.startswith("weight_hh"):
                # Orthogonal recurrent weights per gate block keep early gradients tame.
                for block in param.data.chunk(param.shape[0] // self.config.hidden, dim=0):
                    nn.init.orthogonal_(block)
            elif name.startswith("bias"):
                nn.init.zeros_(param)
                if self.config.cell == "lstm" and name.startswith("bias_ih"):
                    h = self.config.hidden
                    param.data[h : 2 * h] = 1.0  # forget-gate bias 1: remember by default
        nn.init.zeros_(self.head.bias)

    def init_hidden(self, batch_size: int, device: torch.device | str = "cpu") -> Hidden:
        """Zeros in torch.nn's form: one (L, B, H) tensor per state part (see charnn.arch)."""
        shape = arch.hidden_shape(self.config, batch_size)
        parts = [torch.zeros(shape, device=device) for _ in arch.state_parts(self.config.cell)]
        return parts[0] if len(parts) == 1 else (parts[0], parts[1])

    def forward(self, idx: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        """idx (B, T) int64 -> logits (B, T, V) and the final hidden state."""
        x = self.drop(self.embed(idx))  # (B, T, E)
        if self.training and self.config.weight_drop > 0:
            out, hidden = self.recurrent(x, hidden, self.config.weight_drop)  # (B, T, H)
        else:
            out, hidden = self.rnn(x, hidden)  # (B, T, H)
        logits = self.head(self.drop(out))  # (B, T, V)
        return logits, hidden

    def recurrent(
        self, x: torch.Tensor, hidden: Hidden | None, weight_drop: float
    ) -> tuple[torch.Tensor, Hidden]:
        """The recurrent layers with DropConnect of probability ``weight_drop`` on every
        ``weight_hh``: one mask per call (per batch), shared by all time steps and streams,
        survivors scaled by 1/(1-p). The gradient reaches the undropped parameters through the
        mask. x (B, T, E) -> (B, T, H) and the final hidden state, as ``self.rnn`` returns."""
        rnn = self.rnn
        names: list[str] = rnn._flat_weights_names  # per layer: weight_ih, weight_hh, bias_ih, bias_hh
        weights = [
            F.dropout(getattr(rnn, n), weight_drop, training=True)
            if n.startswith("weight_hh")
            else getattr(rnn, n)
            for n in names
        ]
        if hidden is None:
            hidden = self.init_hidden(x.shape[0], x.device)
        kernel: Any = _KERNELS[self.config.cell]
        # (input, hx, weights, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        result = kernel(x, hidden, weights, True, rnn.num_layers, rnn.dropout, True, False, True)
        if isinstance(hidden, tuple):
            out, h, c = result
            return out, (h, c)
        out, h = result
        return out, h

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_hidden(hidden: Hidden) -> Hidden:
    """Cut the graph at a window boundary (truncated BPTT) while keeping the values."""
    if isinstance(hidden, tuple):
        return tuple(h.detach() for h in hidden)  # type: ignore[return-value]
    return hidden.detach()


def hidden_tensors(hidden: Hidden) -> dict[str, torch.Tensor]:
    """Name the parts of a hidden state (for checkpoints): ``h``, and ``c`` for LSTM."""
    parts = hidden if isinstance(hidden, tuple) else (hidden,)
    return dict(zip(arch.PART_NAMES, parts, strict=False))  # a cell's parts are a prefix of them


def hidden_from_tensors(cell: str, tensors: dict[str, torch.Tensor]) -> Hidden:
    parts = [tensors[name] for name in arch.state_parts(cell)]
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])
