"""The static training step of GRU4Rec (issue #31): one step of gather -> GRU -> scores -> loss -> gradients
-> row updates in which every tensor's shape is fixed by the run's settings (B slots, n_sample, layers) and
nothing waits for the device, so that it can be compiled whole (torch.compile, fullgraph) or captured as a
CUDA graph.

It computes the step of `GRU4Rec.train_step` followed by `AdagradM.update` (spec B3-B9) with the data
dependence taken out:

* the distinct item rows of a step (today `unique_rows`: `nonzero`, a row count U that sizes the score
  product and the sparse gradients) become K fixed *segments*, K = the number of ids the step reads
  (inputs and candidates): segment k holds the k-th smallest distinct id (found by marking the ids in a
  table of the items and counting the marks, up to DENSE_ITEMS items; by sorting the ids above that) and
  the segments past the last distinct id hold that id again, with zero score columns. In the shared mode
  the candidates' distinct ids take the first segments and the input-only ids the ones after them, so the
  score product and its two gradient products span the first C segments (the official code's C = B +
  n_sample columns), not all K = 2B + n_sample: in-process A/B of the compiled step against all K, 20
  rounds, median ratio, 18,752 items, 2 threads (2026-12-07): rees46 1.044, diginetica 1.011, coveo 1.010,
  yoochoose 0.99, RSC15 (37,500 items) 1.00; the three products alone at rees46's shapes 8.67 against
  9.32 ms. Scores, gradients and the AdagradM row rule are computed per segment, as today per distinct row;
* the row updates read each segment's row once and write it once (`row_update`): the segments past the
  last distinct id take its gradient and mask, so they compute its new values bit for bit and their
  duplicate writes cannot change the result, whatever their order; no padding row is needed. (Until
  2026-12-07 the writes went through the sorted ids, each gathering its segment's new values: at the
  RSC15 setting the compiled step took 1.88 ms, now 1.80: 37,500 items, 2 threads.) In the shared mode
  an input-only item gets no b_y update, as today: a mask keeps its old b_y, accumulator and velocity.
  The compiled step on the CPU leaves these updates to row_kernel, after its graph: one C++ pass that
  reads and writes each row once, skipping the repeated segments (Inductor cannot fuse a read and a write
  through a computed index; CompiledStep); there the shared mode's W_y gradient goes to the kernel in parts,
  the score product's C rows and the input rows' gradients with their segments, which the kernel sums in the
  eager form's order (row_kernel.parts): the graph builds no K-row gradient;
* session starts are a mask (all false when none starts), the optimiser state exists before the first step,
  the loss stays on the device;
* the sums over duplicate ids (the bias gradient over the candidates, the input rows' gradient) are
  scatter_add_, not index_add_: eagerly the same numbers bit for bit (both add in index order), but Inductor
  writes index_add_ as atomic adds over threads, which add duplicates in whatever order the threads meet, and
  leaves scatter_add_ to ATen's kernel on the CPU. Until 2026-12-07 a compiled run on two threads did not
  repeat itself (the demo's first epoch twice: loss 10.773730 and 10.595170); now it does (10.729789 both
  times), at the same speed.

The same numbers, to float rounding: segments past U add zero columns to the products, and every
operation is the fast step's, in its order, except one: the top state's gradient is an (M x C) @ (C x L)
product where the fast step's is (M x U) @ (U x L), and it sums its terms in the segments' order (the
candidates' rows first) where the fast step sums them in the ids' order, and a matrix kernel may sum the
extra zero terms in another order too (tests/test_static_step.py checks the update to 1e-5 from each of 30
states, and at the issue's settings after 1 and 200 steps; before the candidates-first order, with all K
segments in the ids' order: 1.3e-7 absolute on W_y after one step at the demo setting, 2,269 items, where U
= 1,200 of K = 2,112; at the issue's XE setting, 331 items, 1.2e-6 of the largest value of b_ih after one
step on an AMD EPYC with AVX-512, bit-equal on the earlier machines). The epoch's tail, where
slots run out and the batch shrinks (spec B2), stays on the fast step: its shapes change every few steps.

Covered: every embedding mode (shared, separate and the one-hot input, whose epoch tail runs the plain step:
the fast step does not cover it), AdagradM with and without momentum; the losses with an explicit gradient
(cross-entropy, BPR-max with ELU or linear activation) and the others through autograd on the scores, which
compile whole too (Dynamo's trace_autograd_ops, set by CompiledStep): at the RSC15 setting (37,500 items, 2
threads) compiled / fast 1.45-1.52x for TOP1, 1.27-1.33x BPR, 1.21-1.22x TOP1-max, 1.19-1.22x BPR-max with
tanh (two runs of bench_static_step.py --loss, benchmarks/RESULTS.md).

Modes (--step_mode, `step_for`): `static` runs this step eagerly, `compiled` under
torch.compile(fullgraph=True) (Inductor's C++ kernels on CPU, compiled at the first step: 7.3 s in the demo
run, up to a minute with a cold on-disk cache; a failure falls back to the fast step with one warning line);
`graph` and `compiled_graph` capture the static or compiled step as a CUDA graph and replay it (GraphStep:
GPU only; its buffer plumbing is tested on the CPU with a stand-in graph API, the capture itself needs a GPU
and scripts/gpu_check.sh), and evaluate with the full-batch steps captured too (`evaluation_options`;
evaluation.EvaluationGraph); `auto`, the default, picks `compiled` on the CPU where it measured faster, whole
runs with their compilation (`auto_mode`), else `fast`. Measured on 2 CPU cores (issue #31, open):
* scripts/bench_static_step.py, RSC15 setting (37,500 items, B 32, 2048 samples: U = 1,953 of K = 2,112;
  2026-12-07): eager 0.85x the fast step, compiled 1.61x (1.82 ms a step), 1.41x with Inductor's row
  updates in the graph (`inductor_rows`). Before row_kernel, a profile put 0.5-0.7 ms of the compiled step
  in Inductor's update of W_y, its accumulator and velocity (four passes over the 2,112 rows, buffers
  between them) and 0.52 ms in the matrix products; row_kernel's one pass takes 0.2 ms, most of it waiting
  for scattered rows (the next rows are prefetched). Tried before: one interleaved [W | G | v] table per item
  table (one gather and one scatter of 1,200-byte rows), not kept: the whole compiled step stayed at 1.14x /
  1.21x then;
* the demo (2,269 items, U = 1,200 of K = 2,112): where most candidates repeat, K-sized products and
  updates cost more than the fusion saves, hence auto_mode's item threshold;
* calling the compiled step through Dynamo took 140 us a call at the RSC15 setting beside the compiled
  graph's 0.9 ms (its frame evaluation, the guards over the model, optimiser state and loss); the ahead-of-
  time compiled function (CompiledStep.DIRECT, 2026-12-08) skips that: one-process A/B 1.125x at RSC15
  (37,500 items), 1.04x at yoochoose and retailrocket (18,752 items).
Compiled and eager agree to float rounding after one step (1.1e-6 relative at most, with Inductor's
fallback_random for the same dropout draws; at the issue's settings, XE at 100 units and BPR-max with ELU at
512, one compiled step and one fast step from the state after 1 and after 200 compiled steps: weights and
optimiser state within 7.6e-7 of the largest value, the updates within 2.4e-6 of the largest update, the
static step eager bit-equal to the fast one there; tests/test_static_step.py); over many steps no two
roundings stay close: training amplifies a 1e-7 relative change of W_y to 0.26 after 30 steps (the eager
step perturbed by hand does the same), so modes are compared one step from a common state, not after 200
steps.
"""
import sys
import time

import torch
import torch.nn.functional as F

import row_kernel
from devices import CudaGraphs, GraphReplay, compilation_timer, fallback_warning, has_compiler
from optimizer import AdagradM


DENSE_ITEMS = 100_000       # segments() marks the ids in a table of the items up to this many items, else sorts them


def segments(ids, n_items=None, primary=None):
    """Fixed-size distinct rows of `ids` (K,): (each id's segment, the segment rows (K,: the k-th smallest
    distinct id; past the last distinct id, that id again), each segment's source (K,: the segment whose
    values it takes: itself, past the last distinct id the last one)). The static form of
    `model.unique_rows`: no count is read, nothing waits for the device.
    `primary` (P): the distinct ids of ids[:P] take the first segments, in increasing order, and the others
    the segments after them, in increasing order (the shared mode's candidates first: tensor_step's products
    then span the first P segments only); None: all ids alike.
    `n_items`, the ids' range, up to DENSE_ITEMS: the ids are marked in an n_items-long table and each id's
    segment is the count of marks below it (a cumsum), instead of sorting the ids; the same three tensors.
    With `primary`, both counts come from one cumsum of a packed int64 (the primary ids' marks in the low 32
    bits, the others' above): against two cumsums, in-process A/B of the compiled RSC15-setting step, 30
    rounds, 2 threads (2026-12-08): 1.035 at 37,500 items, 1.026 at 100,000, 1.019 at 2,808, 1.009 at 18,752.
    The compiled RSC15-setting step on 2 CPU threads, with the marks against the sort: 1.05-1.12x at 2,808-
    100,000 items, 0.97x at 200,000 (the cumsum grows with the table: 7 us at 18,752 items, 20 at 52,739,
    70 at 200,000; benchmarks/RESULTS.md, 2026-12-07)."""
    P = len(ids) if primary is None else primary
    if n_items is not None and n_items <= DENSE_ITEMS:
        # marks: 1 for a primary id, 2 for an id that occurs only past P, 0 for the others
        marks = torch.zeros(n_items, dtype=torch.int32, device=ids.device)
        marks.index_fill_(0, ids[P:], 2).index_fill_(0, ids[:P], 1)
        first = marks == 1
        if P < len(ids):        # both counts in one cumsum: the primaries' in the low 32 bits, the others' above
            both = (first.to(torch.int64) + ((marks == 2).to(torch.int64) << 32)).cumsum(0)
            rank = (both & 0xFFFFFFFF) - 1                          # a primary id's segment
            later = (both >> 32) + rank[-1]                         # the segment of an id past P
            rank = torch.where(first, rank, later)
            last = later[-1]
        else:
            rank = first.cumsum(0) - 1                              # (int64) an id's segment
            last = rank[-1]
        segment = rank.index_select(0, ids)
    else:
        key = ids
        if P < len(ids):                # the ids past P that are not primary sort after every primary one
            primaries = torch.sort(ids[:P]).values
            at = torch.searchsorted(primaries, ids[P:]).clamp_(max=P - 1)
            later = primaries.index_select(0, at) != ids[P:]
            key = torch.cat([ids[:P], ids[P:] + later * (ids.max() + 1)])
        sorted_key, order = torch.sort(key, stable=True)
        first = torch.ones_like(ids, dtype=torch.bool)
        first[1:] = sorted_key[1:] != sorted_key[:-1]
        sorted_segment = first.cumsum(0) - 1
        segment = torch.empty_like(sorted_segment).scatter_(0, order, sorted_segment)
        last = sorted_segment[-1]
    distinct = torch.zeros_like(ids).scatter_(0, segment, ids)          # equal values per target
    source = torch.minimum(torch.arange(len(ids), device=ids.device), last)
    return segment, distinct.index_select(0, source), source


def row_update(table, state, rows, source, grad, lr, mu, eps, touched=None):
    """AdagradM's row rule (spec B9, `AdagradM._sparse_step`) for the segment rows `rows` with their
    gradients `grad` (zero past the last distinct row), in one read and one write of each row: the segments
    past the last distinct row repeat its row, gradient and mask (`source`), so they compute its new values
    bit for bit and their duplicate writes cannot change the result. `touched`: mask of the segments the
    gradient names; the others keep their values (b_y of input-only items in the shared mode)."""
    grad = grad.index_select(0, source)
    acc = state['acc'].index_select(0, rows)
    velocity = state['velocity'].index_select(0, rows) if mu > 0 else None
    new_acc = acc.clone()
    new_velocity = None if velocity is None else velocity.clone()
    step = AdagradM._rule(new_acc, new_velocity, grad, lr, mu, eps)
    old = table.index_select(0, rows)
    new = old + step
    if touched is not None:
        mask = touched.index_select(0, source).view(-1, *([1] * (grad.dim() - 1)))
        new_acc = torch.where(mask, new_acc, acc)
        new = torch.where(mask, new, old)
        if mu > 0:
            new_velocity = torch.where(mask, new_velocity, velocity)
    state['acc'].index_copy_(0, rows, new_acc)
    if mu > 0:
        state['velocity'].index_copy_(0, rows, new_velocity)
    table.index_copy_(0, rows, new)


def static_step(model, optimizer, loss, inputs, hidden, candidates, reset, correction=None):
    """One training step and its update, in place on the model and optimiser state: returns (loss, new
    hidden list). inputs (M,), candidates (C,) item indices; hidden: list of (M, L); reset (M,) bool, the
    rows whose session starts here (their state is zeroed first); correction: the logQ term of the
    candidates or None. The arithmetic of GRU4Rec.train_step + AdagradM.update, static shapes."""
    return tensor_step(model, *optimizer_tensors(model, optimizer), loss, inputs, hidden, candidates, reset,
                       correction)


def optimizer_tensors(model, optimizer):
    """What the step needs of the optimiser, as tensors and numbers: (the item tables' states [W_y, b_y(, E)],
    the dense parameters, their states, (lr, momentum, eps)). A compiled step that takes these instead of the
    optimiser object is reused by the next model of the same settings (Dynamo guards an object it reads a
    dict from by its identity, so every new optimiser compiled anew: 5 s each, and the 9th failed)."""
    group = optimizer.param_groups[0]
    tables = [model.Wy, model.By] + ([model.E] if model.mode == 'separate' else []) + \
        ([model.Wx0] if model.mode == 'none' else [])
    dense = [p for p in group['params'] if all(p is not t for t in tables)]
    return ([optimizer.state[t] for t in tables], dense, [optimizer.state[p] for p in dense],
            (group['lr'], group['momentum'], group['eps']))


@torch.no_grad()        # the backward is written out (a loss without one enables autograd on the scores alone)
def tensor_step(model, table_states, dense, dense_states, hyper, loss, inputs, hidden, candidates, reset,
                correction=None, deferred=False):
    """static_step with the optimiser given as `optimizer_tensors`: the function that is compiled. `deferred`:
    leave the item tables' row updates undone and return their (rows, source, gradient, touched mask or None)
    too, one per table of `row_tables` (CompiledStep applies them with row_kernel)."""
    lr, mu, eps = hyper
    M, C = len(inputs), len(candidates)
    hidden = [h.masked_fill(reset[:, None], 0.0) for h in hidden]
    if model.mode == 'shared':
        segment, rows, source = segments(torch.cat([candidates, inputs]), model.n_items, primary=C)
        columns, in_segment = segment[:C], segment[C:]
        w = model.Wy.index_select(0, rows)
        x = w.index_select(0, in_segment)
    else:
        table = model.E if model.mode == 'separate' else model.Wx0   # one-hot: the first layer's input weights
        in_segment, in_rows, in_source = segments(inputs, model.n_items)
        x = table.index_select(0, in_rows).index_select(0, in_segment)
        columns, rows, source = segments(candidates, model.n_items)
        w = model.Wy.index_select(0, rows)
    K = len(rows)
    bias = model.By.index_select(0, candidates)          # = By[rows][columns]: one indirection, not two
    if model.mode == 'none':
        first, first_saved = model.onehot_forward(x, hidden[0])
        new, saved = model.stack_forward(first, hidden[1:], input_dropout=False)
        new = [first] + new
    else:
        new, saved = model.stack_forward(x, hidden)
    top = new[-1]
    w_scored = w[:C]                # the segments the candidates can be in (all K = C of them but in the shared mode)
    columns_m = columns.expand(M, -1)
    scores = F.linear(top, w_scored).gather(1, columns_m) + bias
    value, grad_scores = loss.value_and_grad(scores if correction is None else scores - correction)
    grad_bias = grad_scores.new_zeros(K).scatter_add_(0, columns, grad_scores.sum(0))
    grad_scores = grad_scores.new_zeros(M, C).scatter_add_(1, columns_m, grad_scores)
    grad_w = grad_scores.T @ top
    grad = model.stack_backward(saved, grad_scores @ w_scored)
    if model.mode == 'none':
        grad = model.onehot_backward(first_saved, grad)
    if model.mode == 'shared':
        grad_w = (grad_w, grad, in_segment)     # the score product's C rows, the input rows, their segments
        if not deferred:    # summed into K rows here (the input-only segments: no score), else by row_kernel
            grad_w = row_kernel.whole(grad_w, K)
        candidate = torch.zeros(K, dtype=torch.bool, device=rows.device).index_fill_(0, columns, True)
        updates = [(rows, source, grad_w, None), (rows, source, grad_bias, candidate)]
    else:
        grad_x = grad.new_zeros(len(in_rows), grad.shape[1]).scatter_add_(0, in_segment[:, None].expand_as(grad), grad)
        updates = [(in_rows, in_source, grad_x, None), (rows, source, grad_w, None), (rows, source, grad_bias, None)]
    AdagradM._dense_step(dense, [p.grad for p in dense], dense_states, lr, mu, eps)
    if deferred:
        return value, new, updates
    for (table, state), (update_rows, update_source, update_grad, touched) in zip(row_tables(model, table_states),
                                                                                   updates):
        row_update(table, state, update_rows, update_source, update_grad, lr, mu, eps, touched)
    return value, new


def row_tables(model, table_states):
    """The item tables that tensor_step updates row by row, with their optimiser states, in its order."""
    pairs = [(model.Wy, table_states[0]), (model.By, table_states[1])]
    if model.mode != 'shared':
        pairs.insert(0, (model.E if model.mode == 'separate' else model.Wx0, table_states[2]))
    return pairs


def init_state(optimizer):
    """AdagradM's accumulator and velocity for every parameter before the first step (its own `update`
    makes them on the first step; a captured step must not allocate)."""
    for group in optimizer.param_groups:
        for p in group['params']:
            state = optimizer.state[p]
            if not state:
                state['acc'] = torch.zeros_like(p)
                state['velocity'] = torch.zeros_like(p)


# ---------------------------------------------------------------- the training loop's entry

STEP_MODES = ('auto', 'fast', 'plain', 'static', 'compiled', 'graph', 'compiled_graph')
STATIC_MODES = STEP_MODES[3:]                 # the modes of the static step
GRAPH_MODES = ('graph', 'compiled_graph')     # captured as a CUDA graph (GraphStep)
COMPILED_MODES = ('compiled', 'compiled_graph')   # these also evaluate compiled (evaluation.CompiledBlocks)


def supported(model, optimizer):
    """Whether the static step covers this model and optimiser (module docstring): the fast step's modes with
    AdagradM in one parameter group."""
    return (getattr(model, 'has_static_step', False) and isinstance(optimizer, AdagradM)
            and len(optimizer.param_groups) == 1)


def traces_autograd():
    """Whether this torch's Dynamo can trace `torch.autograd.grad` inside a compiled step (its config flag
    trace_autograd_ops; torch 2.13 has it): the losses with no written gradient compile whole only then."""
    from torch._dynamo import config as dynamo
    return hasattr(dynamo, 'trace_autograd_ops')


COMPILE_SECONDS = []        # each compilation of the static step in this process, seconds (benchmarks read it)


def aot_compile(compiled, args, kwargs, attempts=3):
    """Dynamo's ahead-of-time compilation of `compiled` (a torch.compile'd function) for this call. A
    compilation that asks to restart its analysis (Dynamo's TensorifyScalarRestartAnalysis: a number it made
    an input in a recompilation, e.g. another learning rate, must be specialised after all; Dynamo's own calls
    restart it themselves) is tried again, up to `attempts` times."""
    from torch._dynamo.exc import RestartAnalysis
    for attempt in range(attempts):
        try:
            return compiled.aot_compile((args, kwargs))
        except RestartAnalysis:
            if attempt == attempts - 1:
                raise


class CompiledStep:
    """static_step under torch.compile(fullgraph=True) (`tensor_step`, compiled at its first call; Inductor: C++
    kernels on CPU; its on-disk cache makes the next run's compilation short). The next model of the same
    settings reuses the compiled step; another learning rate or momentum compiles anew (Dynamo specialises
    on numbers). Dropout draws the eager step's numbers (Inductor's fallback_random). A compilation that
    fails prints one warning line and the step runs eagerly from then on (`failed`; the training loop takes
    the fast step, or the plain one for the one-hot input, instead: `fell_back`); nothing has changed the
    state when a compilation fails.
    On the CPU the kernels are called from Inductor's C++ wrapper (CPP_WRAPPER) instead of its Python one:
    the same kernels and numbers bit for bit, a shorter way between them (the RSC15 step 2.00 against
    2.29-2.36 ms, 37,500 items, 2 threads; at RSC15 scale 14,904 against 14,045 events/s); its own C++ file
    compiles once a setting and stays in Inductor's on-disk cache (RSC15 setting: 19.2 s fully cold against
    22.8 with the Python wrapper, 11.9 s with only the kernels cached, 3.4 s warm either way). Where the C++
    wrapper fails to compile, the Python wrapper is compiled instead (`wrapper`), with one warning line (or
    only the one above if that fails too).
    On the CPU the item tables' row updates run after the graph, by row_kernel's one pass over the rows
    (ROW_KERNEL, `fits_kernel`; tensor_step's `deferred` returns them undone), instead of Inductor's four
    passes inside it: the same numbers bit for bit, 1.82 against 2.07 ms a step at the RSC15 setting (37,500
    items, 2 threads), 5-26% at the other paramfiles (18,752 items; bench_static_step.py's inductor_rows
    rows). Where the kernel does not build (one warning line) or a table does not fit it, the graph keeps
    the updates.
    On the CPU the step is compiled ahead of time (DIRECT; torch.compile's `aot_compile`, where this torch has
    it) and called as the function Dynamo makes of it (the graph's call, its outputs and its writes to .grad),
    without Dynamo's frame evaluation and guard checks at each call: the same graph and kernels, bit for bit
    (tests), the RSC15 step 1.125x as fast (37,500 items, 2 threads, 20 of 20 alternating rounds: 1.04 against
    1.17 ms), yoochoose and retailrocket 1.04x (18,752 items). The guards are checked where a call differs
    from the last one in anything but its tensors' values (`run`'s key: the model, optimiser or loss object,
    a shape, the grad mode, ...); nothing in a run changes a model's attributes between such calls. Where the
    ahead-of-time compilation fails, the step is compiled and called through Dynamo, silently."""

    failed = False
    RECOMPILE_LIMIT = 64        # settings compiled in one process (torch's default, 8, is reached by a tuning run
                                # or a benchmark over the paramfiles, and would leave the rest eager)
    CPP_WRAPPER = True          # Inductor's C++ wrapper around the kernels on the CPU (class docstring)
    DIRECT = True               # on the CPU, the compiled step called without Dynamo's frame evaluation (docstring)
    ROW_KERNEL = True           # the item tables' row updates by row_kernel on the CPU (class docstring; an
                                # instance may set its own)

    def __init__(self):
        from torch._dynamo import config as dynamo
        from torch._inductor import config as inductor
        inductor.fallback_random = True
        dynamo.recompile_limit = max(dynamo.recompile_limit, CompiledStep.RECOMPILE_LIMIT)
        if traces_autograd():           # the losses without a written gradient (TOP1, BPR, ...) take theirs from
            dynamo.trace_autograd_ops = True    # autograd on the scores: without this, Dynamo refuses to trace it
        self.functions = {}                # wrapper ('cpp' or 'python') -> tensor_step compiled with it
        self.cpp_failed = False            # the C++ wrapper failed to compile once: the Python one from then on
        self.last = None                   # (model, optimiser, their optimizer_tensors) of the last call
        self.kernel_fits = False           # row_kernel takes the last call's row updates (fits_kernel)
        self.direct = []                   # (wrapper, Dynamo's ahead-of-time compiled step), the oldest first
        self.direct_last = None            # (key, compiled function) of the last call (`run`)
        self.direct_failed = set()         # wrappers whose ahead-of-time compilation failed: Dynamo's calls

    def wrapper(self, model):
        """Inductor's wrapper for a step of `model`: 'cpp' on the CPU (CPP_WRAPPER), else 'python'."""
        cpu = model.Wy.device.type == 'cpu'
        return 'cpp' if cpu and CompiledStep.CPP_WRAPPER and not self.cpp_failed else 'python'

    def function(self, wrapper):
        """tensor_step compiled with Inductor's `wrapper` (made at the first call for it)."""
        if wrapper not in self.functions:
            self.functions[wrapper] = torch.compile(tensor_step, fullgraph=True,
                                                    options={'cpp_wrapper': wrapper == 'cpp'})
        return self.functions[wrapper]

    def __call__(self, model, optimizer, *args):
        if CompiledStep.failed:
            return static_step(model, optimizer, *args)
        if (self.last is None or self.last[0] is not model or self.last[1] is not optimizer
                or self.last[2][0][0] is not optimizer.state.get(model.Wy)):    # (a load_state_dict since)
            self.last = (model, optimizer, optimizer_tensors(model, optimizer))
            self.kernel_fits = self.fits_kernel(model)
            self.direct_last = None
        wrapper = self.wrapper(model)
        deferred = self.ROW_KERNEL and self.kernel_fits
        try:
            result = self.run(wrapper, (model, *self.last[2], *args), deferred)
        except Exception as err:            # no C++ compiler, an operator Inductor cannot take, Dynamo's
            if wrapper == 'cpp':            # recompile limit (RECOMPILE_LIMIT settings in one process), ...
                self.cpp_failed = True
                result = self(model, optimizer, *args)      # the Python wrapper, else (one warning) the eager step
                if not CompiledStep.failed:
                    fallback_warning("Inductor's C++ wrapper did not compile", err, 'compiled with its Python wrapper')
                return result
            CompiledStep.failed = True
            fallback_warning('the static step did not compile', err,
                             f'training with the {"fast" if model.has_fast_step else "plain"} step')
            return static_step(model, optimizer, *args)
        if not deferred:
            return result
        value, new, updates = result
        lr, mu, eps = self.last[2][3]
        for (table, state), (rows, source, grad, touched) in zip(row_tables(model, self.last[2][0]), updates):
            if row_kernel.fits_update(table, rows, grad):               # (the table was checked by fits_kernel)
                row_kernel.row_update(table, state, rows, source, grad, lr, mu, eps, touched)
            else:                               # (in place on parameters: outside autograd, as tensor_step)
                with torch.no_grad():
                    row_update(table, state, rows, source, row_kernel.whole(grad, len(rows)), lr, mu, eps, touched)
        return value, new

    def run(self, wrapper, args, deferred):
        """tensor_step(*args, deferred=deferred) compiled with `wrapper`: on the CPU as one of Dynamo's functions
        compiled ahead of time (DIRECT), else through Dynamo's frame evaluation. A call whose key (everything
        of it but its tensors' values and the objects `self.last` holds) is the last call's takes the last
        call's function without checking guards; another checks the guards of the functions compiled so far
        (the last RECOMPILE_LIMIT) and takes the first that passes, else compiles one more."""
        compiled = self.function(wrapper)
        model, loss, inputs, hidden, candidates, reset, correction = args[0], *args[5:]
        if (not self.DIRECT or wrapper in self.direct_failed or not hasattr(compiled, 'aot_compile')
                or model.Wy.device.type != 'cpu'):
            with compilation_timer(self.compiled):
                return compiled(*args, deferred=deferred)
        key = (wrapper, deferred, loss, torch.is_grad_enabled(), torch.are_deterministic_algorithms_enabled(),
               inputs.device, inputs.shape, inputs.dtype, candidates.shape, candidates.dtype,
               reset.shape, None if correction is None else (correction.shape, correction.dtype),
               tuple((h.shape, h.dtype) for h in hidden))
        if self.direct_last is not None and self.direct_last[0] == key:
            return self.direct_last[1](*args, deferred=deferred)
        kwargs = {'deferred': deferred}
        function = next((f for w, f in self.direct if w == wrapper and f.guard_check(*args, **kwargs)), None)
        if function is None:
            start = time.perf_counter()
            try:
                function = aot_compile(compiled, args, kwargs)
            except Exception:       # (this torch's ahead-of-time compilation cannot take the step): Dynamo's call,
                self.direct_failed.add(wrapper)     # which compiles or fails as it would have
                return self.run(wrapper, args, deferred)
            self.compiled(time.perf_counter() - start)
            self.direct = (self.direct + [(wrapper, function)])[-CompiledStep.RECOMPILE_LIMIT:]
        self.direct_last = (key, function.fn)
        return function.fn(*args, **kwargs)

    def fits_kernel(self, model):
        """Whether row_kernel can take the row updates of `model`'s step (on the CPU, where the kernel builds and
        fits the tables): then they run after the compiled graph (with ROW_KERNEL), else in it."""
        return (model.Wy.device.type == 'cpu'
                and all(row_kernel.fits_table(table, state) for table, state in row_tables(model, self.last[2][0]))
                and row_kernel.kernel() is not None)

    @staticmethod
    def compiled(seconds):
        COMPILE_SECONDS.append(seconds)
        print(f'compiled the static step in {seconds:.1f} s', flush=True)


class GraphStep(GraphReplay):
    """A step function (`static_step`, or a CompiledStep) captured whole as a CUDA graph and replayed: one
    launch a step (devices.GraphReplay: WARMUP plain calls, then one capture, then replays fed through its
    input buffers: items, candidates, reset mask, logQ column, hidden state). Returns the graph's own output
    tensors: the loss and hidden state of a step are overwritten by the next replay (the training loop reads
    the loss at once and passes the hidden state back). One setting is kept (a new model, optimiser, loss or
    batch shape captures anew and frees the old graph). A capture that fails prints one warning line and the
    function runs uncaptured from then on (`failed`); nothing has changed when a capture fails. `graphs`:
    the CUDA graph API (devices.CudaGraphs; the tests give a CPU stand-in)."""

    failed = False
    what, instead = 'the static step', 'training without the graph'

    def __init__(self, function, graphs=CudaGraphs):
        super().__init__(graphs)
        self.function = function

    def __call__(self, model, optimizer, loss, inputs, hidden, candidates, reset, correction=None):
        def step(inputs, candidates, reset, correction, *hidden):
            return self.function(model, optimizer, loss, inputs, list(hidden), candidates, reset, correction)
        return self.replay((model, optimizer, loss), step, (inputs, candidates, reset, correction, *hidden))


_compiled = None
_graphs = {}                    # --step_mode -> its GraphStep (the capture lives across epochs)
GRAPH_API = CudaGraphs
_warned = set()


def graphs_possible(model):
    """CUDA graphs need the model (a GRU4Rec) on a CUDA device."""
    return getattr(model, 'Wy', None) is not None and model.Wy.is_cuda


def evaluation_options(mode, model):
    """evaluate()'s keyword arguments for a run in step mode `mode` (mode_in_effect's): the compiled blocks in
    the compiled modes; the full-batch steps captured as a CUDA graph in the graph modes on a CUDA model."""
    graphs = GRAPH_API if mode in GRAPH_MODES and graphs_possible(model) else None
    return {'compiled': mode in COMPILED_MODES, 'graphs': graphs}


def step_for(mode, model, optimizer):
    """The step function of --step_mode `mode` for this run, or None for the fast / plain step (also where
    the static step does not cover the model or optimiser, where compiling failed, and for the graph modes
    on a CPU)."""
    global _compiled
    if mode not in STATIC_MODES or not supported(model, optimizer):
        return None
    if mode in GRAPH_MODES and not graphs_possible(model):
        return None
    init_state(optimizer)
    if mode == 'static':
        return static_step
    if mode == 'graph':
        return _graphs.setdefault(mode, GraphStep(static_step, GRAPH_API))
    if CompiledStep.failed:
        return None
    if _compiled is None:
        _compiled = CompiledStep()
    if mode == 'compiled_graph':
        return _graphs.setdefault(mode, GraphStep(_compiled, GRAPH_API))
    return _compiled


AUTO_ITEMS = 2_500               # --step_mode auto compiles on the CPU from this many items,
AUTO_WORK = 2_000_000            # this many training events x epochs,
AUTO_MAX_BATCH = 200             # and batches up to this size (auto_mode's docstring)


def fell_back(step):
    """Whether `step` is the compiled step and its compilation failed (the training loop then takes the fast step
    for the rest of the epoch: the eager static step is 0.81x its speed)."""
    return isinstance(step, CompiledStep) and CompiledStep.failed


def auto_mode(config, model, optimizer, n_items, n_events, device, loss=None):
    """(the mode --step_mode auto trains with, why): on the CPU the compiled step where it was measured faster
    including its compilation (AUTO_ITEMS items or more, where candidates repeat less often; since the C++
    wrapper and the deterministic sums, 2026-12-07, 2 threads: the five paramfiles of batch up to 200
    1.08-1.14x the fast step on the 2,808-item sample and 1.17-1.40x on 18,752 synthetic items; the RSC15
    setting in bench_static_step.py 0.90x at 1,000 items, 1.17x at 2,269 (the demo's epoch 1.15x), 1.25x
    at 5,000, 1.33x at 10,000, retailrocket's 0.84x / 0.94x / 1.17x at 1,000 / 2,269 / 5,000; enough
    training for 3-23 s of compilation to pay: AUTO_WORK events x epochs; batches up to AUTO_MAX_BATCH:
    rees46's batch of 240 at 512 units measured 0.88x / 1.07x on 2,808 / 18,752 items), else the fast step; on a
    GPU the fast step until scripts/gpu_check.sh has measured the graph modes there. `loss` (a loss.ScoreLoss):
    one that takes its gradient from autograd (TOP1, BPR, ...) compiles only where Dynamo traces autograd.
    The one-hot input (no fast step: the plain one) compiles at any item count where the compilation pays
    (the iclr16 presets, 2 threads, compiled / plain: TOP1 2.47-2.95x, BPR 2.49x at batch 50 from 2,808 to
    37,500 items, its candidates the batch's targets alone; XE at batch 500 1.09-1.17x; TOP1 with 2,048
    samples 1.23x / 1.47x at 2,808 / 37,500 items), else trains with the eager static step where it has no
    sampled negatives (1.14-1.23x plain, no compilation; with 2,048 samples 0.85x / 1.04x), else plain."""
    if torch.device(device).type != 'cpu':
        return 'fast', 'the graph modes are not yet measured on a GPU'
    if not supported(model, optimizer) or not config.get('fast_step', True):
        return 'fast', 'the static step does not cover this model or optimiser'
    onehot = not model.has_fast_step
    otherwise = 'static' if onehot and config.get('n_sample', 0) == 0 else 'fast'    # ('fast': plain, one-hot)
    work = n_events * config.get('n_epochs', 1)
    if work < AUTO_WORK or (n_items < AUTO_ITEMS and not onehot):
        return otherwise, (f'{n_items:,} items, {work:,} events x epochs: compiling pays from '
                           + ('' if onehot else f'{AUTO_ITEMS:,} and ') + f'{AUTO_WORK:,}')
    if loss is not None and loss.explicit is None and not traces_autograd():
        return otherwise, "this torch's Dynamo cannot trace the loss's autograd gradient"
    if config.get('batch_size', 0) > AUTO_MAX_BATCH:
        return otherwise, f'batch size {config["batch_size"]}: compiling pays up to {AUTO_MAX_BATCH}'
    if not has_compiler():
        print(f'warning: no C++ compiler for torch.compile (g++, c++ or clang++); training with the {otherwise} '
              'step', file=sys.stderr)
        return otherwise, 'no C++ compiler'
    return 'compiled', f'{n_items:,} items, {work:,} events x epochs'


def mode_in_effect(config, model, optimizer):
    """The step mode a run trains with: --step_mode, unless the model or optimiser is not covered (fast, or
    plain where the fast step does not apply: the one-hot mode), --no-fast_step asks for plain, or a graph
    mode meets a model off CUDA (fast or plain, with one warning line a process)."""
    allowed = config.get('fast_step', True)
    fast = 'fast' if allowed and getattr(model, 'has_fast_step', False) else 'plain'
    mode = config.get('step_mode', 'fast')
    if mode == 'auto':                      # resolved by training.train; here (a bare train_epoch) the fast step
        mode = 'fast'
    if mode == 'plain' or not allowed:
        return 'plain'
    if mode not in STATIC_MODES or not supported(model, optimizer):
        return fast
    if mode in GRAPH_MODES and not graphs_possible(model):
        if mode not in _warned:
            _warned.add(mode)
            print(f'warning: --step_mode {mode} needs a CUDA device (CUDA graphs); training with the {fast} step',
                  file=sys.stderr)
        return fast
    return mode
