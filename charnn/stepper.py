"""Fast one-token-at-a-time inference for sampling on CPU.

Calling ``nn.LSTM`` once per character is slow on CPU: every call pays oneDNN's
fixed set-up cost, which dwarfs the arithmetic of a single step. FastStepper
instead snapshots the weights into a layout made for single steps and runs the
cells in numpy float32 (OpenBLAS's matrix-vector product is about twice as fast as
torch's MKL one on AMD CPUs, and a numpy call costs a fraction of a torch op):

* the embedding is folded into layer 0's input projection: a per-token table
  ``embed.weight @ W_ih_l0.T + biases`` (V, G*H) replaces embedding + matmul by
  one row lookup;
* weights are stored transposed and C-contiguous, so a step is row-vector @ matrix;
* layers > 0 of LSTM/RNN do one matmul on ``[x, h]`` against ``[W_ih | W_hh]``;
* LSTM gate columns are reordered to (i, f, o, g) and the sigmoid gates' columns
  (and GRU's r, z) are pre-scaled by 1/2 (exact in binary floating point), so
  ``sigmoid(x) = (tanh(x/2) + 1) / 2`` lets one tanh call cover all four gates;
* GRU keeps the n-gate's hidden bias ``b_hn`` on the hidden side, because it sits
  inside ``r * (W_hn h + b_hn)`` and so cannot be folded into the input table.

prime() runs the nn modules in one pass (what they are good at) and converts the state.
The stepper always behaves like eval mode (no dropout). Weights are float32 on
CPU, copied at construction: build a new stepper after changing the model.

OpenBLAS should run single-threaded here (``OPENBLAS_NUM_THREADS=1`` before numpy is
first imported; the CLI sets it): a one-row step cannot use a second thread, and its
spin-waiting collapses throughput whenever other processes keep the cores busy.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from charnn.config import GATES
from charnn.model import CharRNN, Hidden

# One float32 array (N, S) per state: per-layer hidden states h_0..h_{L-1} side by side, then
# (LSTM only) the cell states c_0..c_{L-1}; each block H wide. step() always returns a fresh
# array and never writes to its input, so a caller may keep old states (beams do).
State = np.ndarray
Ids = torch.Tensor | np.ndarray


_ROWWISE_MAX = 6  # batches up to this many rows multiply row by row (see _matmul); measured crossover


def _matmul(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """a (N, K) @ w (K, M) as float32. Small batches go one matrix-vector product per row:
    OpenBLAS's sgemm repacks the whole weight matrix on every call, which costs 4x more than
    the product itself for N=2 (a 2x512 @ 512x1024 took 230 us, two row products 55 us; a whole
    2x256 LSTM step for 4 rows 220 us vs 257, for 8 rows 400 us vs 332 with sgemm)."""
    n = a.shape[0]
    if n == 1 or n > _ROWWISE_MAX:
        return np.dot(a, w)
    out = np.empty((n, w.shape[1]), dtype=np.float32)
    for r in range(n):
        np.dot(a[r], w, out=out[r])
    return out


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
        gates = GATES[cfg.cell]
        # Columns fed to a sigmoid, pre-scaled by 1/2: LSTM (i, f, o) after reordering, GRU (r, z).
        scale = torch.ones(gates * H, dtype=torch.float64)
        if cfg.cell == "lstm":
            # PyTorch gate order is (i, f, g, o); (i, f, o, g) makes the sigmoid gates contiguous.
            order: torch.Tensor | None = torch.arange(4 * H).view(4, H)[[0, 1, 3, 2]].flatten()
            scale[: 3 * H] = 0.5
        else:
            order = None
            if cfg.cell == "gru":
                scale[: 2 * H] = 0.5

        def f32(t: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.to(torch.float32).numpy())

        self._w: list[np.ndarray] = []  # (H, G*H) for layer 0; [W_ih | W_hh].T (2H, G*H) above (LSTM/RNN)
        self._w_x: list[np.ndarray | None] = []  # GRU layers > 0: input weights (H, 3H)
        self._b: list[np.ndarray] = []  # (G*H,) bias on the input side (layer 0's lives in the table)
        self._b_h: list[np.ndarray | None] = []  # GRU only: (3H,) = [b_hr, b_hz, b_hn] on the hidden side
        table = torch.empty(0)
        for layer in range(cfg.layers):
            w_ih, w_hh = sd[f"rnn.weight_ih_l{layer}"], sd[f"rnn.weight_hh_l{layer}"]  # (G*H, in), (G*H, H)
            b_ih, b_hh = sd[f"rnn.bias_ih_l{layer}"], sd[f"rnn.bias_hh_l{layer}"]  # (G*H,)
            if order is not None:
                w_ih, w_hh, b_ih, b_hh = w_ih[order], w_hh[order], b_ih[order], b_hh[order]
            if cfg.cell == "gru":
                b_x = b_ih + torch.cat([b_hh[: 2 * H], torch.zeros(H, dtype=b_hh.dtype)])
                b_h: torch.Tensor | None = torch.cat([torch.zeros(2 * H, dtype=b_hh.dtype), b_hh[2 * H :]])
            else:
                b_x, b_h = b_ih + b_hh, None
            w_ih, w_hh, b_x = w_ih * scale[:, None], w_hh * scale[:, None], b_x * scale
            self._b_h.append(None if b_h is None else f32(b_h * scale))
            if layer == 0:
                table = sd["embed.weight"] @ w_ih.T + b_x  # (V, G*H)
                self._w.append(f32(w_hh.T))
                self._w_x.append(None)
            elif cfg.cell == "gru":
                self._w.append(f32(w_hh.T))
                self._w_x.append(f32(w_ih.T))
            else:
                self._w.append(f32(torch.cat([w_ih, w_hh], dim=1).T))  # (2H, G*H)
                self._w_x.append(None)
            self._b.append(f32(b_x))
        self._table = f32(table)
        self._w_head = f32(sd["head.weight"].T)  # (H, V); tied weights are just read through
        self._b_head = f32(sd["head.bias"])
        self._width = cfg.layers * H * (2 if cfg.cell == "lstm" else 1)  # S, the state's row width
        self._cell_step = {"lstm": self._step_lstm, "gru": self._step_gru, "rnn": self._step_rnn}[cfg.cell]

    # -- state handling ---------------------------------------------------------------------------

    def initial_state(self, n: int) -> State:
        return np.zeros((n, self._width), dtype=np.float32)

    def reorder(self, state: State, index: Ids) -> State:
        """Rows ``index`` of the state (a new array): selects, drops or duplicates streams."""
        return state[np.asarray(index, dtype=np.intp)]

    def _to_hidden(self, state: State) -> Hidden:
        n, L, H = state.shape[0], self.layers, self.hidden
        blocks = torch.from_numpy(np.ascontiguousarray(state)).view(n, -1, H).transpose(0, 1)  # (L|2L, N, H)
        if self.cell == "lstm":
            return (blocks[:L].contiguous(), blocks[L:].contiguous())
        return blocks.contiguous()

    def _from_hidden(self, hidden: Hidden) -> State:
        blocks = torch.cat(hidden, dim=0) if isinstance(hidden, tuple) else hidden  # (L or 2L, N, H)
        return np.ascontiguousarray(blocks.transpose(0, 1).reshape(blocks.shape[1], -1).numpy())

    # -- inference --------------------------------------------------------------------------------

    def prime(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Feed ids (N, T) in one pass; return logits (N, V) of the last position and the state."""
        with torch.inference_mode():
            hidden = None if state is None else self._to_hidden(state)
            logits, hidden = self._model(torch.as_tensor(ids).to("cpu"), hidden)  # (N, T, V)
            return logits[:, -1].contiguous(), self._from_hidden(hidden)

    def step(self, ids: Ids, state: State) -> tuple[torch.Tensor | np.ndarray, State]:
        """Advance every stream by one token: ids (N,) -> logits (N, V) and the new state.

        Logits come back as the same kind as ``ids``: a torch tensor for a tensor, a numpy
        float32 array for an array (what generate() uses, skipping the conversions).
        """
        as_torch = isinstance(ids, torch.Tensor)
        rows = ids.numpy() if as_torch else ids
        # Layer 0's input projection: table rows (a slice, no gather, for a single stream).
        x = self._table[rows[0] : rows[0] + 1] if len(rows) == 1 else self._table[rows]
        # The new state starts as a copy of the old and each layer updates its blocks in place:
        # then [h_{l-1} (new), h_l (old)], the input of layer l > 0, is one contiguous slice.
        new = state.copy()
        h_top = self._cell_step(x, new)
        logits = _matmul(h_top, self._w_head)
        logits += self._b_head
        return (torch.from_numpy(logits) if as_torch else logits), new

    def _step_lstm(self, x: np.ndarray, new: State) -> np.ndarray:
        L, H = self.layers, self.hidden
        for layer in range(L):
            if layer == 0:
                gates = _matmul(new[:, :H], self._w[0])
                gates += x  # (N, 4H) as (i, f, o, g), the sigmoid ones halved
            else:
                gates = _matmul(new[:, (layer - 1) * H : (layer + 1) * H], self._w[layer])
                gates += self._b[layer]
            np.tanh(gates, out=gates)
            sig = gates[:, : 3 * H]
            sig *= 0.5
            sig += 0.5  # sigmoid(x) = (tanh(x / 2) + 1) / 2
            i, f, o, g = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
            c = new[:, (L + layer) * H : (L + layer + 1) * H]
            c *= f
            g *= i
            c += g  # c = f * c + i * g
            h = new[:, layer * H : (layer + 1) * H]
            np.tanh(c, out=h)
            h *= o
        return h

    def _step_gru(self, x: np.ndarray, new: State) -> np.ndarray:
        H = self.hidden
        for layer in range(self.layers):
            h = new[:, layer * H : (layer + 1) * H]
            w_x = self._w_x[layer]
            if w_x is not None:
                x = _matmul(x, w_x)
                x += self._b[layer]  # (N, 3H): r, z with both biases (halved), n with b_in
            gh = _matmul(h, self._w[layer])
            gh += self._b_h[layer]  # (N, 3H): W_h h, plus b_hn on n
            rz = x[:, : 2 * H] + gh[:, : 2 * H]
            np.tanh(rz, out=rz)
            rz *= 0.5
            rz += 0.5  # sigmoid
            r, z = rz[:, :H], rz[:, H:]
            n_gate = gh[:, 2 * H :]
            n_gate *= r
            n_gate += x[:, 2 * H :]
            np.tanh(n_gate, out=n_gate)
            h -= n_gate
            h *= z
            h += n_gate  # (1 - z) * n + z * h
            x = h
        return h

    def _step_rnn(self, x: np.ndarray, new: State) -> np.ndarray:
        H = self.hidden
        for layer in range(self.layers):
            h = new[:, layer * H : (layer + 1) * H]
            if layer == 0:
                np.add(_matmul(h, self._w[0]), x, out=h)
            else:
                xh = new[:, (layer - 1) * H : (layer + 1) * H]
                np.add(_matmul(xh, self._w[layer]), self._b[layer], out=h)
            np.tanh(h, out=h)
        return h
