"""Fast one-token-at-a-time inference for sampling on CPU, in numpy (no torch import).

Calling ``nn.LSTM`` once per character is slow on CPU: every call pays oneDNN's
fixed set-up cost, which dwarfs the arithmetic of a single step. FastStepper
instead takes the weights (numpy arrays, as a checkpoint stores them) into a layout
made for single steps and runs the cells in numpy float32 (OpenBLAS's matrix-vector
product is about twice as fast as torch's MKL one on AMD CPUs, a numpy call costs a
fraction of a torch op, and ``charnn sample`` never has to import torch):

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

prime() feeds a sequence through the same cells layer by layer: the input projections
of a whole window (table rows for layer 0, one matrix product for layers above) come
first, then only the recurrent product runs per position. Long inputs go in windows
with the state carried, so memory stays bounded. The stepper behaves like eval mode
(no dropout).

OpenBLAS should run single-threaded here (``OPENBLAS_NUM_THREADS=1`` before numpy is
first imported; the CLI sets it): a one-row step cannot use a second thread, and its
spin-waiting collapses throughput whenever other processes keep the cores busy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from charnn import arch
from charnn.config import ModelConfig

if TYPE_CHECKING:
    from charnn.model import CharRNN

# One float32 array (N, S) per state, a row per stream, laid out as charnn.arch draws it:
# per-layer hidden states h_0..h_{L-1} side by side, then (LSTM only) the cell states
# c_0..c_{L-1}; each block H wide. No method writes to a state it is given, so a caller may
# keep old states (beams do).
State = np.ndarray


class Stepper(Protocol):
    """Inference over one model's weights, one implementation per engine: :class:`FastStepper`
    (numpy) and :class:`~charnn.torch_stepper.TorchStepper` (torch's fused modules). Both
    behave like eval mode (no dropout), take ids as integer arrays, return float32 logits, and
    share one state layout (:mod:`charnn.arch`), so a state from one continues in the other.
    Sampling, beam search, eval and score are written once, over this protocol."""

    @property
    def vocab_size(self) -> int: ...

    def initial_state(self, n: int) -> State:
        """The zero state of ``n`` streams: (n, S)."""
        ...

    def step(self, ids: Any, state: State) -> tuple[np.ndarray, State]:
        """One token per stream: ids (N,) -> logits (N, V) and the new state."""
        ...

    def prime(self, ids: Any, state: State | None = None) -> tuple[np.ndarray, State]:
        """Feed ids (N, T >= 1) of any length (in bounded windows) from ``state`` (default
        zeros) -> the logits (N, V) after the last position and the new state."""
        ...

    def forward(self, ids: Any, state: State | None = None) -> tuple[np.ndarray, State]:
        """Logits after every position: ids (N, T) -> (N, T, V) and the new state; one window,
        so the caller bounds T."""
        ...

    def target_logprobs(self, ids: Any, targets: Any, state: State | None = None) -> tuple[np.ndarray, State]:
        """log p(targets[n, t] | ids[n, :t+1]) as float64 (N, T), and the new state: what eval
        and score need of :meth:`forward`, computed where the logits live (no (N, T, V)
        float64 copy of a torch model's logits)."""
        ...

    def reorder(self, state: State, index: Any) -> State:
        """Rows ``index`` of the state (a new array): selects, drops or duplicates streams."""
        ...


PRIME_WINDOW = 2048  # positions per prime window: bounds the (T, N, G*H) projections


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


def _packing(cell: arch.Cell, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """Row order and scale of the packed gate blocks: the sigmoid gates first and pre-scaled by
    1/2 (exact in binary floating point), so ``sigmoid(x) = (tanh(x/2) + 1) / 2`` lets one tanh
    call cover them all. LSTM (i, f, g, o) becomes (i, f, o, g); GRU (r, z, n) stays."""
    packed = cell.sigmoid + tuple(g for g in cell.gates if g not in cell.sigmoid)
    order = np.concatenate([np.arange(hidden * cell.gate_count)[cell.gate_rows(g, hidden)] for g in packed])
    scale = np.ones(cell.gate_count * hidden)
    scale[: len(cell.sigmoid) * hidden] = 0.5
    return order, scale


def _lstm_cell(gates: np.ndarray, h: np.ndarray, c: np.ndarray) -> None:
    """One LSTM update in place: gates (N, 4H) pre-activations as (i, f, o, g), the sigmoid
    ones halved; c and h (N, H) are views into the state."""
    H = h.shape[1]
    np.tanh(gates, out=gates)
    sig = gates[:, : 3 * H]
    sig *= 0.5
    sig += 0.5  # sigmoid(x) = (tanh(x / 2) + 1) / 2
    i, f, o, g = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    c *= f
    g *= i
    c += g  # c = f * c + i * g
    np.tanh(c, out=h)
    h *= o


def _gru_cell(x: np.ndarray, gh: np.ndarray, h: np.ndarray) -> None:
    """One GRU update of h (N, H) in place from the input side x (N, 3H) (r, z with both biases,
    halved; n with b_in) and the hidden side gh (N, 3H) = W_h h + [0, 0, b_hn] (gh is overwritten)."""
    H = h.shape[1]
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


class FastStepper:
    """The :class:`Stepper` protocol in numpy, over a snapshot of a model's weights."""

    def __init__(self, config: ModelConfig, weights: Mapping[str, np.ndarray]) -> None:
        """``weights``: arrays named as in ``CharRNN.state_dict()`` (``head.weight`` may be absent
        when tied), as a validated checkpoint holds them. They are copied, not kept."""
        self.config = config
        self.cell, self.layers, self.hidden = config.cell, config.layers, config.hidden
        self.vocab_size = config.vocab_size
        # Derive in float64 and round once, so the folded table is as exact as the unfolded maths.
        sd = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
        H = config.hidden
        order, scale = _packing(arch.CELLS[config.cell], H)
        self._w: list[np.ndarray] = []  # (H, G*H) for layer 0; [W_ih | W_hh].T (2H, G*H) above (LSTM/RNN)
        self._w_x: list[np.ndarray | None] = []  # GRU layers > 0: input weights (H, 3H)
        self._b: list[np.ndarray] = []  # (G*H,) bias on the input side (layer 0's lives in the table)
        self._b_h: list[np.ndarray | None] = []  # GRU only: (3H,) = [b_hr, b_hz, b_hn] on the hidden side
        table = np.empty(0)
        for layer in range(config.layers):
            names = arch.layer_names(layer)
            w_ih, w_hh = sd[names.w_ih][order], sd[names.w_hh][order]  # (G*H, in), (G*H, H)
            b_ih, b_hh = sd[names.b_ih][order], sd[names.b_hh][order]  # (G*H,)
            b_h: np.ndarray | None = None
            if config.cell == "gru":
                b_x = b_ih + np.concatenate([b_hh[: 2 * H], np.zeros(H)])
                b_h = np.concatenate([np.zeros(2 * H), b_hh[2 * H :]])
            else:
                b_x = b_ih + b_hh
            w_ih, w_hh, b_x = w_ih * scale[:, None], w_hh * scale[:, None], b_x * scale
            self._b_h.append(None if b_h is None else _f32(b_h * scale))
            if layer == 0:
                table = sd[arch.EMBED] @ w_ih.T + b_x  # (V, G*H)
                self._w.append(_f32(w_hh.T))
                self._w_x.append(None)
            elif config.cell == "gru":
                self._w.append(_f32(w_hh.T))
                self._w_x.append(_f32(w_ih.T))
            else:
                self._w.append(_f32(np.concatenate([w_ih, w_hh], axis=1).T))  # (2H, G*H)
                self._w_x.append(None)
            self._b.append(_f32(b_x))
        self._table = _f32(table)
        head = sd.get(arch.HEAD_WEIGHT, sd[arch.EMBED])  # tied weights share the embedding
        self._w_head = _f32(head.T)  # (H, V)
        self._b_head = _f32(sd[arch.HEAD_BIAS])
        # Where each layer's blocks sit in a state row (arch's layout): h_l, c_l (LSTM), and
        # [h_{l-1}, h_l], the fused input of layer l > 0 (adjacent blocks).
        self._h = [arch.block(config, "h", layer) for layer in range(config.layers)]
        self._c = [
            arch.block(config, "c", layer) if config.cell == "lstm" else None
            for layer in range(config.layers)
        ]
        self._xh = [
            slice(self._h[max(layer - 1, 0)].start, self._h[layer].stop) for layer in range(config.layers)
        ]
        self._cell_step = {"lstm": self._step_lstm, "gru": self._step_gru, "rnn": self._step_rnn}[config.cell]

    @classmethod
    def from_model(cls, model: CharRNN) -> FastStepper:
        """A snapshot of a torch model's current weights (any device or dtype; eval behaviour)."""
        arrays = {k: v.detach().to("cpu").float().numpy() for k, v in model.state_dict().items()}
        return cls(model.config, arrays)

    # -- state handling ---------------------------------------------------------------------------

    def initial_state(self, n: int) -> State:
        return arch.initial_state(self.config, n)

    def reorder(self, state: State, index: Any) -> State:
        """Rows ``index`` of the state (a new array): selects, drops or duplicates streams."""
        return arch.reorder_state(state, index)

    # -- inference --------------------------------------------------------------------------------

    def prime(self, ids: Any, state: State | None = None) -> tuple[np.ndarray, State]:
        """Feed ids (N, T), T >= 1, from ``state`` (default zeros); return the logits (N, V) after
        the last position and the new state. Runs in windows of PRIME_WINDOW positions."""
        ids = np.asarray(ids)  # any integer dtype: a huge prime stays uint8/uint16 until its window
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"prime needs ids of shape (N, T >= 1), got {ids.shape}")
        state = self.initial_state(ids.shape[0]) if state is None else state.copy()
        for start in range(0, ids.shape[1], PRIME_WINDOW):
            window = ids[:, start : start + PRIME_WINDOW].T.astype(np.intp)  # (T, N)
            h_top = self._prime_window(window, state)[-1]
        logits = _matmul(h_top, self._w_head)
        logits += self._b_head
        return logits, state

    def forward(self, ids: Any, state: State | None = None) -> tuple[np.ndarray, State]:
        """Logits after every position: ids (N, T) -> logits (N, T, V) float32 and the new state.
        One window: the caller bounds T (score and eval feed windows with the state carried)."""
        ids = np.asarray(ids)
        state = self.initial_state(ids.shape[0]) if state is None else state.copy()
        seq = self._prime_window(ids.T.astype(np.intp), state)  # (T, N, H)
        logits = seq @ self._w_head  # (T, N, V)
        logits += self._b_head
        return logits.transpose(1, 0, 2), state

    def target_logprobs(self, ids: Any, targets: Any, state: State | None = None) -> tuple[np.ndarray, State]:
        """log p(targets | ids so far) (N, T) float64 from :meth:`forward`'s logits, and the state."""
        logits, state = self.forward(ids, state)
        return gather_logprobs(logits, np.asarray(targets)), state

    def _prime_window(self, ids: np.ndarray, state: State) -> np.ndarray:
        """ids (T, N): advance ``state`` in place layer by layer; return the top layer's h (T, N, H)."""
        H, T, N = self.hidden, ids.shape[0], ids.shape[1]
        seq = np.empty((T, N, H), dtype=np.float32)  # one layer's outputs, the next layer's inputs
        for layer in range(self.layers):
            h = state[:, self._h[layer]]
            # Input projections of the whole window in one product (a table lookup for layer 0).
            if layer == 0:
                xp = self._table[ids]  # (T, N, G*H)
            else:
                gru_w_x = self._w_x[layer]
                w_x = gru_w_x if gru_w_x is not None else self._w[layer][:H]
                xp = (seq.reshape(T * N, H) @ w_x).reshape(T, N, -1)
                xp += self._b[layer]
            w_h = self._w[layer] if layer == 0 or self.cell == "gru" else self._w[layer][H:]
            c = state[:, self._c[layer] or slice(0)]  # LSTM cell state (unused otherwise)
            for t in range(T):
                hidden_side = _matmul(h, w_h)
                if self.cell == "lstm":
                    hidden_side += xp[t]
                    _lstm_cell(hidden_side, h, c)
                elif self.cell == "gru":
                    hidden_side += self._b_h[layer]
                    _gru_cell(xp[t], hidden_side, h)
                else:
                    np.add(hidden_side, xp[t], out=h)
                    np.tanh(h, out=h)
                seq[t] = h
        return seq

    def step(self, ids: Any, state: State) -> tuple[np.ndarray, State]:
        """Advance every stream by one token: ids (N,) -> logits (N, V) float32 and the new state."""
        rows = np.asarray(ids)
        # Layer 0's input projection: table rows (a slice, no gather, for a single stream).
        x = self._table[rows[0] : rows[0] + 1] if len(rows) == 1 else self._table[rows]
        # The new state starts as a copy of the old and each layer updates its blocks in place:
        # then [h_{l-1} (new), h_l (old)], the input of layer l > 0, is one contiguous slice.
        new = state.copy()
        h_top = self._cell_step(x, new)
        logits = _matmul(h_top, self._w_head)
        logits += self._b_head
        return logits, new

    def _step_lstm(self, x: np.ndarray, new: State) -> np.ndarray:
        for layer in range(self.layers):
            if layer == 0:
                gates = _matmul(new[:, self._h[0]], self._w[0])
                gates += x  # (N, 4H) as (i, f, o, g), the sigmoid ones halved
            else:
                gates = _matmul(new[:, self._xh[layer]], self._w[layer])  # [h_{l-1} (new), h_l (old)]
                gates += self._b[layer]
            h = new[:, self._h[layer]]
            _lstm_cell(gates, h, new[:, self._c[layer]])
        return h

    def _step_gru(self, x: np.ndarray, new: State) -> np.ndarray:
        for layer in range(self.layers):
            h = new[:, self._h[layer]]
            w_x = self._w_x[layer]
            if w_x is not None:
                x = _matmul(x, w_x)
                x += self._b[layer]  # (N, 3H): r, z with both biases (halved), n with b_in
            gh = _matmul(h, self._w[layer])
            gh += self._b_h[layer]  # (N, 3H): W_h h, plus b_hn on n
            _gru_cell(x, gh, h)
            x = h
        return h

    def _step_rnn(self, x: np.ndarray, new: State) -> np.ndarray:
        for layer in range(self.layers):
            h = new[:, self._h[layer]]
            if layer == 0:
                np.add(_matmul(h, self._w[0]), x, out=h)
            else:
                np.add(_matmul(new[:, self._xh[layer]], self._w[layer]), self._b[layer], out=h)
            np.tanh(h, out=h)
        return h


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


_LOGPROB_ROWS = 1 << 20  # logits per block in gather_logprobs: bounds its float64 temporaries


def gather_logprobs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """logits (..., V), targets (...) -> log_softmax(logits)[target] (...) in float64, computed in
    blocks of rows so the float64 temporaries stay small (per row, the same arithmetic as a
    whole-array log-softmax: the reductions run along each row alone)."""
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    picked = np.asarray(targets).reshape(-1).astype(np.intp)
    out = np.empty(len(flat), dtype=np.float64)
    rows = max(1, _LOGPROB_ROWS // vocab)
    for start in range(0, len(flat), rows):
        x = flat[start : start + rows].astype(np.float64)
        shifted = x - x.max(axis=-1, keepdims=True)
        norm = np.log(np.exp(shifted).sum(axis=-1))
        out[start : start + rows] = shifted[np.arange(len(x)), picked[start : start + rows]] - norm
    return out.reshape(np.shape(targets))
