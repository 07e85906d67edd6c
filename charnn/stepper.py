"""Fast one-token-at-a-time inference for sampling on CPU.

Calling ``nn.LSTM`` once per character is slow on CPU: every call pays oneDNN's
fixed set-up cost, which dwarfs the arithmetic of a single step. FastStepper
instead snapshots the weights into a layout made for single steps and runs the
cells with a handful of plain matrix products and pointwise ops:

* the embedding is folded into layer 0's input projection: a per-token table
  ``embed.weight @ W_ih_l0.T + biases`` (V, G*H) replaces embedding + matmul by
  one row lookup;
* layers > 0 of LSTM/RNN do one matmul on ``[x, h]`` against ``[W_ih | W_hh]``;
* LSTM gate columns are reordered to (i, f, o, g) so one sigmoid covers three gates;
* GRU keeps the n-gate's hidden bias ``b_hn`` on the hidden side, because it sits
  inside ``r * (W_hn h + b_hn)`` and so cannot be folded into the input table.

The stepper always behaves like eval mode (no dropout). Weights are float32 on
CPU, copied at construction: build a new stepper after changing the model.
"""

from __future__ import annotations

import copy

import torch

from charnn.model import CharRNN, Hidden

# Per-layer hidden states h_0..h_{L-1}, then (LSTM only) cell states c_0..c_{L-1}; each (N, H).
# States are never modified in place, so a caller may keep old ones (beams do).
State = tuple[torch.Tensor, ...]


class FastStepper:
    """Single-step inference engine over a snapshot of a :class:`CharRNN`."""

    def __init__(self, model: CharRNN) -> None:
        cfg = model.config
        self.cell = cfg.cell
        self.layers = cfg.layers
        self.hidden = cfg.hidden
        self.vocab_size = cfg.vocab_size
        # Private eval-mode CPU copy for prime(): one fused pass over a long prime is
        # what nn.LSTM is good at, and a copy keeps the caller's train/eval mode untouched.
        self._model = copy.deepcopy(model).to("cpu", torch.float32).eval().requires_grad_(False)
        for p in self._model.parameters():
            p.grad = None

        # Derive in float64 and round once, so the folded table is as exact as the unfolded maths.
        sd = {k: v.detach().to(torch.float64) for k, v in self._model.state_dict().items()}
        H = cfg.hidden
        if cfg.cell == "lstm":
            # PyTorch gate order is (i, f, g, o); (i, f, o, g) makes the sigmoid gates contiguous.
            order: torch.Tensor | None = torch.arange(4 * H).view(4, H)[[0, 1, 3, 2]].flatten()
        else:
            order = None

        def f32(t: torch.Tensor) -> torch.Tensor:
            return t.to(torch.float32).contiguous()

        self._w_x: list[torch.Tensor | None] = []  # input weights (in, G*H); None for layer 0 (table)
        self._w_h: list[torch.Tensor] = []  # hidden weights (H, G*H), or [W_ih | W_hh].T (2H, G*H)
        self._b: list[torch.Tensor] = []  # (G*H,) bias added on the input side
        self._b_h: list[torch.Tensor | None] = []  # GRU only: (3H,) = [0, 0, b_hn] on the hidden side
        table = torch.empty(0)
        for layer in range(cfg.layers):
            w_ih, w_hh = sd[f"rnn.weight_ih_l{layer}"], sd[f"rnn.weight_hh_l{layer}"]  # (G*H, in), (G*H, H)
            b_ih, b_hh = sd[f"rnn.bias_ih_l{layer}"], sd[f"rnn.bias_hh_l{layer}"]  # (G*H,)
            if order is not None:
                w_ih, w_hh, b_ih, b_hh = w_ih[order], w_hh[order], b_ih[order], b_hh[order]
            if cfg.cell == "gru":
                b_x = b_ih + torch.cat([b_hh[: 2 * H], torch.zeros(H, dtype=b_hh.dtype)])
                self._b_h.append(f32(torch.cat([torch.zeros(2 * H, dtype=b_hh.dtype), b_hh[2 * H :]])))
            else:
                b_x = b_ih + b_hh
                self._b_h.append(None)
            if layer == 0:
                table = sd["embed.weight"] @ w_ih.T + b_x  # (V, G*H)
                self._w_x.append(None)
                self._w_h.append(f32(w_hh.T))
            elif cfg.cell == "gru":
                self._w_x.append(f32(w_ih.T))
                self._w_h.append(f32(w_hh.T))
            else:
                self._w_x.append(None)
                self._w_h.append(f32(torch.cat([w_ih, w_hh], dim=1).T))  # (2H, G*H)
            self._b.append(f32(b_x))
        self._table = f32(table)
        self._w_head = f32(sd["head.weight"].T)  # (H, V); tied weights are just read through
        self._b_head = f32(sd["head.bias"])
        self._cell_step = {"lstm": self._step_lstm, "gru": self._step_gru, "rnn": self._step_rnn}[cfg.cell]

    # -- state handling ---------------------------------------------------------------------------

    def initial_state(self, n: int) -> State:
        count = self.layers * (2 if self.cell == "lstm" else 1)
        return tuple(torch.zeros(n, self.hidden) for _ in range(count))

    def reorder(self, state: State, index: torch.Tensor) -> State:
        """Rows ``index`` of every state tensor: selects, drops or duplicates streams."""
        return tuple(t.index_select(0, index) for t in state)

    def _to_hidden(self, state: State) -> Hidden:
        h = torch.stack(state[: self.layers])  # (L, N, H)
        if self.cell == "lstm":
            return (h, torch.stack(state[self.layers :]))
        return h

    def _from_hidden(self, hidden: Hidden) -> State:
        if isinstance(hidden, tuple):
            return tuple(hidden[0].unbind(0)) + tuple(hidden[1].unbind(0))
        return tuple(hidden.unbind(0))

    # -- inference --------------------------------------------------------------------------------

    def prime(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Feed ids (N, T) in one pass; return logits (N, V) of the last position and the state."""
        with torch.inference_mode():
            hidden = None if state is None else self._to_hidden(state)
            logits, hidden = self._model(ids.to("cpu"), hidden)  # (N, T, V)
            return logits[:, -1].contiguous(), self._from_hidden(hidden)

    def step(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Advance every stream by one token: ids (N,) -> logits (N, V) and the new state.

        Does not enter inference_mode itself (that costs ~2 us per call): none of the
        weights require grad, so no graph is recorded anyway; generate() wraps its loop.
        """
        x = self._table.index_select(0, ids)  # (N, G*H): layer-0 input projection with biases
        new_state = self._cell_step(x, state)
        h_top = new_state[self.layers - 1]
        return torch.addmm(self._b_head, h_top, self._w_head), new_state  # (N, V)

    def _step_lstm(self, x: torch.Tensor, state: State) -> State:
        L, H = self.layers, self.hidden
        hs: list[torch.Tensor] = []
        cs: list[torch.Tensor] = []
        for layer in range(L):
            h, c = state[layer], state[L + layer]
            if layer == 0:
                gates = torch.addmm(x, h, self._w_h[0])  # (N, 4H) as (i, f, o, g)
            else:
                gates = torch.addmm(self._b[layer], torch.cat([x, h], dim=1), self._w_h[layer])
            # gates is fresh, so in-place activations are safe and save allocations.
            gates[:, : 3 * H].sigmoid_()
            gates[:, 3 * H :].tanh_()
            i, f, o, g = gates.chunk(4, dim=1)
            c = torch.addcmul(f * c, i, g)
            x = c.tanh().mul_(o)
            hs.append(x)
            cs.append(c)
        return tuple(hs) + tuple(cs)

    def _step_gru(self, x: torch.Tensor, state: State) -> State:
        H = self.hidden
        hs: list[torch.Tensor] = []
        for layer in range(self.layers):
            h = state[layer]
            w_x = self._w_x[layer]
            gi = x if w_x is None else torch.addmm(self._b[layer], x, w_x)  # (N, 3H): r, z with both biases
            gh = torch.addmm(self._b_h[layer], h, self._w_h[layer])  # (N, 3H): W_h h, plus b_hn on n
            rz = torch.add(gi[:, : 2 * H], gh[:, : 2 * H]).sigmoid_()
            r, z = rz.chunk(2, dim=1)
            n = torch.addcmul(gi[:, 2 * H :], r, gh[:, 2 * H :]).tanh_()
            x = torch.addcmul(n, z, h - n)  # (1 - z) * n + z * h
            hs.append(x)
        return tuple(hs)

    def _step_rnn(self, x: torch.Tensor, state: State) -> State:
        hs: list[torch.Tensor] = []
        for layer in range(self.layers):
            h = state[layer]
            if layer == 0:
                x = torch.addmm(x, h, self._w_h[0]).tanh_()
            else:
                x = torch.addmm(self._b[layer], torch.cat([x, h], dim=1), self._w_h[layer]).tanh_()
            hs.append(x)
        return tuple(hs)
