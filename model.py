"""The GRU4Rec network (Hidasi et al., ICLR 2016; Hidasi & Karatzoglou, CIKM 2018), spec B3, B4, B8.

Follows the authors' code (hidasib/GRU4Rec_PyTorch_Official `GRU4RecModel`, hidasib/GRU4Rec `model`):

* three input modes (spec B3.1): shared / constrained embedding, where the input vector of item i is row
  i of the output weights W_y (so the first layer's input width is the LAST layer's size; the
  recommended mode); a separate embedding table E; or no embedding, where the first layer consumes the
  one-hot item vector, done as a row lookup of its input weights (N x 3L) - no one-hot is ever built;
* GRU layers: `torch.nn.GRUCell` weights (as PT), computed by `gru_cell` (GRUCell's values, written out
  for the hand-written backward), except the first layer of the no-embedding mode, which is the
  single-bias cell of spec B3.3 whose input weights are that row lookup;
* inverted dropout (spec B4): on the input vector (`dropout_p_embed`) and on the output of EVERY layer
  including the last (`dropout_p_hidden`); the dropped vector is the stored next hidden state and what
  the next layer and the scores see;
* scores r_i = h . w_i + b_i with W_y and b_y two tables, as in the official code: in the shared mode an
  item that is only an INPUT of a step gets a W_y gradient (its input vector) but no b_y update, not even
  the momentum part of one (AdagradM moves only the rows a gradient names); training scores only the
  candidate rows (spec B5.1: targets of the batch plus shared samples), evaluation scores all N items
  (`score_all`);
* the official initialisation (spec B8): every gate block of every weight matrix drawn from
  U(+-sqrt(6 / (fan_in + fan_out))) by a numpy RNG seeded with `seed` (42 by default), biases zero.

Item tables (W_y, b_y, E, the no-embedding input weights) are looked up with sparse gradients, so the
optimiser touches only the rows a step used (spec F3); pass `sparse=False` for torch optimisers that
need dense gradients.

Two training paths compute the same bits: `forward` + autograd (plain, readable), and `train_step`, a
hand-written backward for the shared and separate-embedding modes (issue #6: 1.20-1.36x faster on CPU at
batch 32 for XE, 1.04-1.05x for BPR-max); tests/test_fast_step.py holds them together.

`SampleStore` draws the extra negatives of spec B5.3-B5.4 (popularity^alpha) for the training loop.

Deliberate differences: in the no-embedding mode `dropout_p_embed` is dropout on the one-hot input
itself (the looked-up row of a step is dropped with probability p, otherwise scaled by 1/(1-p)) and
`dropout_p_hidden` applies to that layer's output as to every other layer; the two official codes
disagree here (spec B4.3). The no-embedding mode works with any number of layers (PT crashes, B12.3).
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def uniform_blocks(rng, shape, blocks=1):
    """A (rows, cols) matrix made of `blocks` stacked (rows/blocks, cols) gate blocks, each drawn from
    U(+-sqrt(6 / (rows/blocks + cols))) (spec B8.2)."""
    rows, cols = shape
    bound = math.sqrt(6.0 / (rows // blocks + cols))
    return torch.cat([torch.from_numpy(rng.uniform(-bound, bound, size=(rows // blocks, cols)).astype(np.float32))
                      for _ in range(blocks)])


class DistinctRows(torch.autograd.Function):
    """table[rows] for DISTINCT rows, whose gradient is row-sparse and coalesced: the incoming gradient
    itself, one row per item, with no sorting or summing left to the optimiser (spec B9.2, F3).

    The backward writes the gradient to `table.grad` itself: autograd's accumulation would drop the
    "coalesced" flag of a sparse tensor and the optimiser would sort the rows again every step.
    """

    @staticmethod
    def forward(ctx, table, rows):
        ctx.save_for_backward(rows)
        ctx.table = table
        return table.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad):
        rows, = ctx.saved_tensors
        table = ctx.table
        sparse = _row_sparse(rows, grad, table.shape)
        table.grad = sparse if table.grad is None else table.grad + sparse
        return None, None


def _row_sparse(rows, values, shape):
    """A coalesced row-sparse COO gradient: `values[k]` is row `rows[k]` (sorted, distinct)."""
    return torch.sparse_coo_tensor(rows[None], values, shape, is_coalesced=True, check_invariants=False,
                                   device=values.device)


def unique_rows(index, n):
    """`torch.unique(index, return_inverse=True)` for indices in [0, n): the sorted distinct rows and each
    index's position among them, found by marking the rows of an n-vector instead of sorting (2-3x
    faster on a step's candidates, which repeat popular items many times).

    On a GPU, `nonzero` waits for the device (the number of distinct rows sizes the row-sparse gradient):
    the one host sync left in a training step (issue #16 §8). Removing it would need the distinct rows
    computed on the host from host copies of the inputs and samples, or fixed-size padded gradients;
    not done without a GPU to measure what the sync costs against a launch-bound step."""
    marks = torch.zeros(n, dtype=torch.long, device=index.device).index_fill_(0, index, 1)
    rows = marks.nonzero().squeeze(1)
    return rows, marks.cumsum_(0).sub_(1).index_select(0, index)


def distinct_rows(table, rows, sparse=True):
    """table[rows] for sorted distinct `rows`; a row-sparse gradient unless sparse=False."""
    if sparse and torch.is_grad_enabled() and table.requires_grad:
        return DistinctRows.apply(table, rows)
    return table.index_select(0, rows)


def lookup(table, index, sparse=True):
    """table[index]: each distinct row is read once, so with sparse=True the gradient has one summed row
    per item (duplicates summed by index_select's backward)."""
    if sparse and torch.is_grad_enabled() and table.requires_grad:
        rows, inverse = unique_rows(index, len(table))
        return DistinctRows.apply(table, rows).index_select(0, inverse)
    return table.index_select(0, index)


def gru_cell(cell, x, h):
    """One GRU step (spec B3.2) with the weights of a `torch.nn.GRUCell`, written out: returns the new
    state and what `gru_cell_backward` needs (the gates).

        [r, z] = sigmoid(x W_ir,iz + b_ir,iz + h W_hr,hz + b_hr,hz)
        n = tanh(x W_in + b_in + r * (h W_hn + b_hn));   h' = n + z * (h - n) = (1 - z) n + z h

    Bit for bit the values of GRUCell on CPU; written out so that the hand-written backward can repeat
    autograd's arithmetic exactly."""
    L = h.shape[1]
    gi = F.linear(x, cell.weight_ih, cell.bias_ih)
    gh = F.linear(h, cell.weight_hh, cell.bias_hh)
    rz = torch.sigmoid(gi[:, :2 * L] + gh[:, :2 * L])
    gh_n = gh[:, 2 * L:]
    n = torch.tanh(gi[:, 2 * L:] + rz[:, :L] * gh_n)
    return n + rz[:, L:] * (h - n), (rz, n, gh_n)


def gru_cell_backward(cell, x, h, gates, grad):
    """Gradients of `gru_cell` for the gradient `grad` of its output: sets the cell's weight and bias
    .grad and returns the input's gradient. The state h gets none (no BPTT, spec B10). Each line is
    the formula autograd applies to the matching line of gru_cell, in autograd's order, so the results
    are the same bits."""
    rz, n, gh_n = gates
    L = h.shape[1]
    r, z = rz[:, :L], rz[:, L:]
    grad_z = grad * (h - n)
    grad_n = grad - grad * z
    grad_an = torch.ops.aten.tanh_backward(grad_n, n)
    grad_arz = torch.ops.aten.sigmoid_backward(torch.cat([grad_an * gh_n, grad_z], 1), rz)
    grad_gi = torch.cat([grad_arz, grad_an], 1)
    grad_gh = torch.cat([grad_arz, grad_an * r], 1)
    cell.weight_ih.grad = grad_gi.T @ x
    cell.weight_hh.grad = grad_gh.T @ h
    cell.bias_ih.grad = grad_gi.sum(0)
    cell.bias_hh.grad = grad_gh.sum(0)
    return grad_gi @ cell.weight_ih


def onehot_gru(a, h, U):
    """The one-hot first layer's GRU step (spec B3.3) from its input activations a = x W_x + b (M, 3L):
    [r, z] = sigmoid(a_r,z + h U_r,z), candidate = tanh((r * h) U_h + a_h), h' = h + z (candidate - h).
    Returns h' and the gates (r, z, r * h, candidate)."""
    L = h.shape[1]
    hu = h @ U[:, :2 * L]
    r = torch.sigmoid(a[:, :L] + hu[:, :L])
    z = torch.sigmoid(a[:, L:2 * L] + hu[:, L:])
    rh = r * h
    candidate = torch.tanh(rh @ U[:, 2 * L:] + a[:, 2 * L:])
    return h + z * (candidate - h), (r, z, rh, candidate)        # (1 - z) h + z candidate


def dropout_noise(x, p, bernoulli=False):
    """Inverted dropout's scaled keep mask for x (spec B4): 1 / (1 - p) with probability 1 - p, else 0;
    None when p = 0. Both training paths multiply by it. By default drawn as uniform >= p: torch's
    F.dropout (the official code's nn.Dropout) draws the same distribution through an MKL Bernoulli
    stream set up on every call, 1.7x slower at 32 x 100, 3x at 80 x 224; bernoulli=True draws it that
    way (--official_quirks dropout_bernoulli: the same values as nn.Dropout from the same RNG state)."""
    if p <= 0:
        return None
    if bernoulli:
        return torch.empty_like(x).bernoulli_(1.0 - p).div_(1.0 - p)
    return torch.rand_like(x).ge_(p).div_(1.0 - p)


class GRU4Rec(nn.Module):
    """layers: list of GRU sizes. embedding: 0 = none, k > 0 = separate table of width k.
    constrained_embedding: shared input/output item vectors (takes precedence over `embedding`)."""

    def __init__(self, n_items, layers=(100,), embedding=0, constrained_embedding=True,
                 dropout_p_embed=0.0, dropout_p_hidden=0.0, seed=42, sparse=True, bernoulli_dropout=False):
        super().__init__()
        if n_items < 1 or not layers or min(layers) < 1:
            raise ValueError(f'need n_items >= 1 and positive layer sizes, got {n_items}, {list(layers)}')
        for name, p in (('dropout_p_embed', dropout_p_embed), ('dropout_p_hidden', dropout_p_hidden)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f'{name} must be in [0, 1), got {p}')
        self.n_items, self.layers = n_items, list(layers)
        self.mode = 'shared' if constrained_embedding else ('separate' if embedding > 0 else 'none')
        self.dropout_p_embed, self.dropout_p_hidden = dropout_p_embed, dropout_p_hidden
        self.sparse, self.bernoulli_dropout = sparse, bernoulli_dropout
        rng = np.random.RandomState(seed)
        last = self.layers[-1]
        # output layer: weights W_y (N x L) and biases b_y (N), two row-sparse tables (module docstring)
        self.Wy = nn.Parameter(uniform_blocks(rng, (n_items, last)))
        self.By = nn.Parameter(torch.zeros(n_items))
        first = self.layers[0]
        if self.mode == 'separate':
            self.E = nn.Parameter(uniform_blocks(rng, (n_items, embedding)))
        if self.mode == 'none':
            # one-hot first layer (spec B3.3): input weights N x 3L as a lookup table, one bias, recurrent U
            self.Wx0 = nn.Parameter(torch.cat([uniform_blocks(rng, (n_items, first))
                                               for _ in range(3)], dim=1))   # blocks: reset, update, candidate
            self.Bx0 = nn.Parameter(torch.zeros(3 * first))
            self.U0 = nn.Parameter(torch.cat([uniform_blocks(rng, (first, first))
                                              for _ in range(3)], dim=1))
        widths = {'shared': last, 'separate': embedding, 'none': first}
        cells = []
        for i, size in enumerate(self.layers):
            if i == 0 and self.mode == 'none':
                continue
            fan_in = widths[self.mode] if i == 0 else self.layers[i - 1]
            cell = nn.GRUCell(fan_in, size)
            with torch.no_grad():
                cell.weight_ih.copy_(uniform_blocks(rng, (3 * size, fan_in), 3))
                cell.weight_hh.copy_(uniform_blocks(rng, (3 * size, size), 3))
                cell.bias_ih.zero_()
                cell.bias_hh.zero_()
            cells.append(cell)
        self.cells = nn.ModuleList(cells)

    def init_hidden(self, batch_size, device=None):
        return [torch.zeros(batch_size, size, device=device) for size in self.layers]

    def _lookup(self, table, index):
        return lookup(table, index, sparse=self.sparse)

    def _dropout(self, x, p):
        return x * dropout_noise(x, p, self.bernoulli_dropout) if self.training and p > 0 else x

    def _first_layer_onehot(self, inputs, h):
        """Spec B3.3: [a_r, a_z, a_h] = x W_x + b with x one-hot; r, z gates and candidate from h U."""
        a, _ = self._onehot_input(self._lookup(self.Wx0, inputs), self.training)
        return onehot_gru(a + self.Bx0, h, self.U0)[0]

    def _onehot_input(self, a, training):
        """The one-hot input's dropout (the whole row) on its looked-up rows a: (a, the keep mask or None)."""
        if not training or self.dropout_p_embed <= 0:
            return a, None
        keep = torch.rand(len(a), 1, device=a.device) >= self.dropout_p_embed
        return a * keep / (1.0 - self.dropout_p_embed), keep

    def onehot_forward(self, a, h):
        """The static step's one-hot first layer from its looked-up rows a = W_x0[inputs] (M, 3L): the
        arithmetic and random draws of _first_layer_onehot and the layer's output dropout (hidden_step's
        order); returns (its output, what onehot_backward needs)."""
        a, keep = self._onehot_input(a, True)
        out, gates = onehot_gru(a + self.Bx0, h, self.U0)
        noise = dropout_noise(out, self.dropout_p_hidden, self.bernoulli_dropout)
        return (out if noise is None else out * noise), (h, gates, keep, noise)

    def onehot_backward(self, saved, grad):
        """The gradient of the looked-up rows of onehot_forward for the gradient `grad` of its output; sets
        U0's and Bx0's .grad. The state h gets none (no BPTT, spec B10)."""
        h, (r, z, rh, candidate), keep, noise = saved
        L = h.shape[1]
        grad = grad if noise is None else grad * noise
        grad_ac = torch.ops.aten.tanh_backward(grad * z, candidate)
        grad_r = (grad_ac @ self.U0[:, 2 * L:].T) * h
        grad_arz = torch.ops.aten.sigmoid_backward(torch.cat([grad_r, grad * (candidate - h)], 1),
                                                   torch.cat([r, z], 1))
        grad_a = torch.cat([grad_arz, grad_ac], 1)
        self.U0.grad = torch.cat([h.T @ grad_arz, rh.T @ grad_ac], 1)
        self.Bx0.grad = grad_a.sum(0)
        return grad_a if keep is None else grad_a / (1.0 - self.dropout_p_embed) * keep

    def hidden_step(self, inputs, hidden, input_vectors=None):
        """One step of the GRU stack for item indices `inputs` (M,); hidden: list of (M, L) tensors.

        Returns the new hidden list; its last entry is the (dropped-out) top output used for scoring.
        """
        new = []
        cells = iter(self.cells)
        if self.mode == 'none':
            x = self._first_layer_onehot(inputs, hidden[0])
            x = self._dropout(x, self.dropout_p_hidden)
            new.append(x)
        else:
            x = input_vectors if input_vectors is not None else \
                self._lookup(self.Wy if self.mode == 'shared' else self.E, inputs)
            x = self._dropout(x, self.dropout_p_embed)
        for h in hidden[len(new):]:
            x = self._dropout(gru_cell(next(cells), x, h)[0], self.dropout_p_hidden)
            new.append(x)
        return new

    def forward(self, inputs, hidden, candidates):
        """Training step: scores (M, C) of the candidate items for every row, and the new hidden list.

        Each distinct item is read and scored once and its score column repeated for its duplicates
        among the candidates (the shared samples have many); in shared mode the input rows come from the
        same read. So W_y's gradient arrives with one row per item (spec B9.2) and the products shrink.
        b_y is read for the distinct candidates only."""
        M = len(inputs)
        if self.mode == 'shared':     # one read for inputs and candidates (they share W_y)
            rows, inverse = unique_rows(torch.cat([inputs, candidates]), self.n_items)
            w = distinct_rows(self.Wy, rows, self.sparse)
            hidden = self.hidden_step(inputs, hidden, input_vectors=w.index_select(0, inverse[:M]))
            columns = inverse[M:]
        else:
            hidden = self.hidden_step(inputs, hidden)
            rows, columns = unique_rows(candidates, self.n_items)
            w = distinct_rows(self.Wy, rows, self.sparse)
        bias_rows, bias_columns = self._bias_rows(rows, columns)
        bias = distinct_rows(self.By, bias_rows, self.sparse).index_select(0, bias_columns)
        return F.linear(hidden[-1], w).gather(1, columns.expand(M, -1)) + bias, hidden

    def _bias_rows(self, rows, columns):
        """(the distinct candidate items, each candidate column's position among them), given the sorted
        distinct `rows` a step reads and each candidate's position `columns` in them. In shared mode
        `rows` also holds input-only items, whose b_y the step must not touch."""
        if self.mode != 'shared':
            return rows, columns
        positions, bias_columns = unique_rows(columns, len(rows))
        return rows.index_select(0, positions), bias_columns

    @property
    def has_fast_step(self):
        """train_step covers the shared and separate-embedding modes with row-sparse gradients."""
        return self.mode != 'none' and self.sparse and self.training

    @property
    def has_static_step(self):
        """static_step.py covers every embedding mode (the one-hot one too) with row-sparse gradients."""
        return self.sparse and self.training

    @torch.inference_mode()       # no autograd bookkeeping at all: about 6% of a step on CPU
    def train_step(self, inputs, hidden, candidates, loss, correction=None):
        """Fast path of a training step (issue #6): `forward`, the loss (a loss.ScoreLoss of the scores
        minus the logQ `correction`, if any), then a hand-written backward in place of autograd. Returns
        (loss, new hidden list) and leaves the gradients in .grad exactly as `loss(forward(...) -
        correction).backward()` would (row-sparse and coalesced for the item tables): same random draws,
        same operations in the same order, so the same bits (tests/test_fast_step.py). Every parameter's
        .grad is replaced, not added to, so no zero_grad is needed. Needs `has_fast_step`."""
        M = len(inputs)
        if self.mode == 'shared':
            rows, inverse = unique_rows(torch.cat([inputs, candidates]), self.n_items)
            w = self.Wy.index_select(0, rows)
            x = w.index_select(0, inverse[:M])
            columns = inverse[M:]
        else:
            in_rows, in_inverse = unique_rows(inputs, self.n_items)
            x = self.E.index_select(0, in_rows).index_select(0, in_inverse)
            rows, columns = unique_rows(candidates, self.n_items)
            w = self.Wy.index_select(0, rows)
        bias_rows, bias_columns = self._bias_rows(rows, columns)
        bias = self.By.index_select(0, bias_rows).index_select(0, bias_columns)
        new, saved = self.stack_forward(x, hidden)
        top = new[-1]
        columns = columns.expand(M, -1)
        scores = F.linear(top, w).gather(1, columns) + bias
        loss, grad_scores = loss.value_and_grad(scores if correction is None else scores - correction)
        grad_bias = grad_scores.new_zeros(len(bias_rows)).index_add_(0, bias_columns, grad_scores.sum(0))
        grad_scores = grad_scores.new_zeros(M, len(rows)).scatter_add_(1, columns, grad_scores)
        grad_w = grad_scores.T @ top
        grad = self.stack_backward(saved, grad_scores @ w)
        if self.mode == 'shared':     # the input rows' part, summed per item, joins the scores' part
            grad_x = grad.new_zeros(len(rows), grad.shape[1]).index_add_(0, inverse[:M], grad)
            self.Wy.grad = _row_sparse(rows, grad_w + grad_x, self.Wy.shape)
        else:
            grad_x = grad.new_zeros(len(in_rows), grad.shape[1]).index_add_(0, in_inverse, grad)
            self.E.grad = _row_sparse(in_rows, grad_x, self.E.shape)
            self.Wy.grad = _row_sparse(rows, grad_w, self.Wy.shape)
        self.By.grad = _row_sparse(bias_rows, grad_bias, self.By.shape)
        return loss, new

    def stack_forward(self, x, hidden, input_dropout=True):
        """The training step's GRU stack from the looked-up input vectors x (M, width): input dropout, every
        layer and its output dropout (spec B3.2, B4), as hidden_step; returns (new hidden list, what
        stack_backward needs). The dropout masks are drawn in the order hidden_step draws them. In the
        one-hot mode: the GRUCell layers above the first (input_dropout=False: x is its output)."""
        noise_in = dropout_noise(x, self.dropout_p_embed, self.bernoulli_dropout) if input_dropout else None
        x = x if noise_in is None else x * noise_in
        saved, new = [], []
        for cell, h in zip(self.cells, hidden):
            out, gates = gru_cell(cell, x, h)
            noise = dropout_noise(out, self.dropout_p_hidden, self.bernoulli_dropout)
            saved.append((cell, x, h, gates, noise))
            x = out if noise is None else out * noise
            new.append(x)
        return new, (saved, noise_in)

    @staticmethod
    def stack_backward(saved, grad):
        """The gradient of the input vectors x of stack_forward for the gradient `grad` of its top output;
        sets every cell's weight and bias .grad (gru_cell_backward)."""
        layers, noise_in = saved
        for cell, x, h, gates, noise in reversed(layers):
            grad = gru_cell_backward(cell, x, h, gates, grad if noise is None else grad * noise)
        return grad if noise_in is None else grad * noise_in

    def score_all(self, h):
        """Scores of all N items for top-layer states h (M, L): (M, N), spec B3.2 / C4."""
        return torch.addmm(self.By, h, self.Wy.T)


class GuideTable:
    """torch.searchsorted(cdf, u, right=True) for a non-decreasing `cdf` (n,) and uniforms u in [0, 1), the
    same indices, on the CPU 1.7-3.6x as fast (10M uniforms, 2 threads: over 52,739 items 0.14-0.23 against
    0.52-0.56 s in float64; from 2,808 to 4M items 1.7-2.8x in one call each, float64 and float32; at the
    RSC15 setting the store's refill every 4,882 steps took 0.11 of a 2.2 ms step).

    torch.searchsorted runs a binary search over the whole CDF (16 dependent levels at 52,739 items). Here a guide
    table over G equal bins of [0, 1) holds, for bin b, the count of CDF values <= (b - 1) / G: a lower
    bound of the answer for any u in bin b, one bin of slack either side absorbing the rounding of u * G
    and of the bin edges. Every answer is then within 2^S - 1 of its bin's bound (S: the bits of the widest
    three-bin count), found by S branchless halving steps, each one gather, compare and add over a chunk of
    u that stays in cache. A CDF value equal to u counts as <= u, as searchsorted's right=True."""

    CHUNK = 65_536                  # uniforms a pass (0.5 MB of float64): 0.14 s, 16,384: 0.19 s, 262,144: 0.14 s

    def __init__(self, cdf):
        n = len(cdf)
        eps = torch.finfo(cdf.dtype).eps           # G * eps well under a bin: rounding moves u * G by < 1 bin
        self.bins = max(1, min(16 * n, 2 ** 22, int(0.05 / eps)))    # float32: 419,430 bins at most
        edges = torch.arange(-1, self.bins + 3, dtype=cdf.dtype, device=cdf.device) / self.bins
        counts = torch.searchsorted(cdf, edges, right=True)
        self.lower = counts[:self.bins + 1].to(torch.int32)           # bin b: count(cdf <= (b - 1) / G)
        widest = int((counts[3:] - counts[:self.bins + 1]).max())      # ... <= u <= ... count(cdf <= (b + 2) / G)
        self.steps = widest.bit_length()
        self.padded = torch.cat([cdf, torch.full((1 << self.steps,), float('inf'), dtype=cdf.dtype,
                                                 device=cdf.device)])

    def __call__(self, u):
        flat = u.reshape(-1)
        out = torch.empty(flat.shape, dtype=torch.int64, device=u.device)
        for start in range(0, len(flat), self.CHUNK):
            chunk = flat[start:start + self.CHUNK]
            position = self.lower.index_select(0, chunk.mul(self.bins).long())
            for k in range(self.steps - 1, -1, -1):
                position.add_(self.padded.index_select(0, position + ((1 << k) - 1)) <= chunk, alpha=1 << k)
            out[start:start + self.CHUNK] = position
        return out.view(u.shape)


class SampleStore:
    """Extra negatives shared by a mini-batch, drawn with P(i) proportional to supp(i)^alpha (spec B5.3-B5.4).

    A store of floor(store_size / n_sample) rows x n_sample item indices is generated in one vectorised
    call (inverse CDF: the first item whose cumulative probability exceeds a uniform draw; on the CPU by
    `GuideTable`, the same indices as torch.searchsorted 1.7-3.6x as fast); each step takes the next row; a
    used-up store is regenerated. The store persists across epochs. Uniforms and CDF are float64
    (dtype=torch.float32: the official code's float32, --official_quirks sampler_float32).
    `state_dict()` is small: the generator state the current store was drawn from, and the row pointer.
    """

    def __init__(self, support, n_sample, alpha, store_size=10_000_000, seed=42, device='cpu', dtype=torch.float64):
        weights = torch.as_tensor(np.asarray(support, dtype=np.float64) ** alpha)
        cdf = torch.cumsum(weights, 0) / weights.sum()
        cdf[-1] = 1.0
        self.cdf = cdf.to(device, dtype)
        self.dtype = dtype
        self.guide = GuideTable(self.cdf) if self.cdf.device.type == 'cpu' else None   # measured on the CPU only
        self.n_sample, self.device = n_sample, device
        self.rows = max(1, store_size // max(n_sample, 1))
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self._refill()

    def _refill(self):
        self.generated_from = self.generator.get_state()
        u = torch.rand(self.rows, self.n_sample, dtype=self.dtype, generator=self.generator,
                       device=self.device)
        found = self.guide(u) if self.guide is not None else torch.searchsorted(self.cdf, u, right=True)
        self.store = found.clamp_(max=len(self.cdf) - 1)
        self.pointer = 0

    def next(self):
        if self.pointer == self.rows:
            self._refill()
        self.pointer += 1
        return self.store[self.pointer - 1]

    def state_dict(self):
        return {'generated_from': self.generated_from, 'pointer': self.pointer}

    def load_state_dict(self, state):
        """Raises ValueError for a state that is not this generator's kind (a CPU generator's state is
        5056 bytes, a CUDA one's 16): the two draw different streams, so one cannot continue the other."""
        saved, own = state['generated_from'], self.generator.get_state()
        if not (isinstance(saved, torch.Tensor) and saved.dtype == torch.uint8 and saved.device.type == 'cpu'
                and saved.shape == own.shape):
            size = f'{saved.numel()}-byte' if isinstance(saved, torch.Tensor) else type(saved).__name__
            raise ValueError(f'the sampler state is a {size} generator state, not the {own.numel()}-byte state of '
                             f'a {torch.device(self.device).type} generator')
        self.generator.set_state(saved)
        self._refill()
        self.pointer = int(state['pointer'])
