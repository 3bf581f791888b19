"""Next-click evaluation: rank the target against ALL training items, Recall@K and MRR@K (spec C).

Follows the official evaluators (PT `evaluation.batch_eval`, TH `evaluate_gpu`):

* spec C1-C3  the test file is read with the training item map (unknown items dropped, then sessions
              shorter than 2); sessions run session-parallel, each from an all-zero hidden state; every
              click but a session's first is a prediction target, predicted from the clicks before it;
              dropout is off, no sampling, no logQ;
* spec C4     raw scores of all N training items (h . W_y + b_y); nothing is excluded;
* spec C5     rank of the target, with its own score among the N compared:
                standard      1 + #{score > target}            (optimistic; run.py's default)
                conservative  #{score >= target}               (pessimistic)
                median        1 + #{score > target} + (#{score == target} - 1) / 2
* spec C6     Recall@K = share of targets with rank <= K; MRR@K = mean of 1/rank over them (0 beyond K).

Ranks come from counting comparisons (no sort), and the metric sums stay on the device (read once, at
the end). A step's scores are computed for a block of rows at a time, so memory does not grow with
--eval_batch_size x items: at most SCORE_BLOCK scores on the CPU, DEVICE_SCORE_BLOCK on a GPU (where the
comparison masks add a quarter again). Blocks change nothing but the peak memory: every row is ranked alone.

`compiled=True` (GRU4Rec, --step_mode compiled; issue #31): each block is scored, ranked and counted by one
function under torch.compile (`CompiledBlocks`): Inductor fuses the bias, the comparisons and the counts into
one pass over the scores. The same ranks (the same product, row by row); on the CPU 1.4-1.9x the eager blocks
at 37.5k items on one thread, 1.07x on two at RSC15 scale (52,739 items, scripts/bench_train.py --full_scale:
the product itself is most of the time there). A failed compilation prints one warning line and evaluates eagerly.

`graphs` (--step_mode graph and compiled_graph, on a GPU): every step with all slots live has the same shapes
(B rows, the reset mask a B-long tensor), so `full_batch_step` (the GRU step, then the blocks scored, ranked
and counted eagerly) is captured once as a CUDA graph and replayed, one launch a step (EvaluationGraph); the
tail, where slots run out and the batch shrinks, runs uncaptured: every row is ranked alone, so the numbers
are those of the eager evaluation (the reciprocal-rank sums added in another order: float64 rounding).
"""
import numpy as np
import torch

from dataset import SessionParallelIterator
from devices import GraphReplay, compilation_timer, fallback_warning
from model import GRU4Rec

TIE_MODES = ('standard', 'conservative', 'median')
DEFAULT_CUTOFFS = (1, 5, 10, 20)
SCORE_BLOCK = 4_000_000     # scores computed at once (16 MB): larger blocks are fresh memory every step,
                            # and first-touching it costs more than the product (1.7x slower at 37.5k items)
DEVICE_SCORE_BLOCK = 1 << 27    # on a GPU: 512 MB of scores (all 512 rows of a batch up to 262k items)


def target_ranks(scores, targets, tie_mode='standard'):
    """Rank (1 = best, float) of targets[a] among the scores of row a; scores (M, N), targets (M,)."""
    target = scores.gather(1, targets[:, None])

    def count(mask):                      # int32 sums of a bool matrix: about twice as fast as int64
        return mask.sum(1, dtype=torch.int32).to(scores.dtype)

    if tie_mode == 'standard':
        return 1.0 + count(scores > target)
    if tie_mode == 'conservative':
        return count(scores >= target)
    if tie_mode == 'median':
        return 1.0 + count(scores > target) + (count(scores == target) - 1.0) / 2.0
    raise ValueError(f'unknown tie mode {tie_mode!r}: expected one of {", ".join(TIE_MODES)}')


def metrics_from_ranks(ranks, cutoffs=DEFAULT_CUTOFFS):
    """Recall@K and MRR@K of a vector of ranks (a slow, obvious version for checking)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in cutoffs:
        hit = ranks <= k
        out[f'Recall@{k}'] = float(hit.mean())
        out[f'MRR@{k}'] = float(np.where(hit, 1.0 / ranks, 0.0).mean())
    return out


def score_rows(n_items, device):
    """Rows of a step scored at once against n_items: SCORE_BLOCK / DEVICE_SCORE_BLOCK scores, at least a row."""
    block = SCORE_BLOCK if torch.device(device).type == 'cpu' else DEVICE_SCORE_BLOCK
    return max(1, block // max(n_items, 1))


def block_counts(top, weights, bias, targets, k, tie_mode):
    """(hits, reciprocal-rank sums) per cutoff of k (float64) for a block of GRU4Rec top states `top` (R, L):
    the ranks of `targets` among the scores top W_y^T + b_y of all items."""
    ranks = target_ranks(torch.addmm(bias, top, weights.T), targets, tie_mode).double()
    within = ranks[:, None] <= k
    reciprocal = torch.where(within, 1.0 / ranks[:, None], 0.0)
    return within.sum(0, dtype=torch.float64), reciprocal.sum(0, dtype=torch.float64)


class CompiledBlocks:
    """block_counts under torch.compile(fullgraph=True, dynamic=True): one compilation for every block size
    and item count (a tie mode or cutoff count compiles anew); `failed` after a compilation failed (one
    warning, then eager). Dynamic shapes measured as fast as one fixed block shape (63.9 / 61.8 ms for 512
    rows at 37.5k items, one thread), so the blocks are not padded."""

    failed = False

    def __init__(self):
        self.function = torch.compile(block_counts, fullgraph=True, dynamic=True)

    def __call__(self, model, top, targets, k, tie_mode, rows):
        """(hits, reciprocal sums) of all rows of a step, in blocks of `rows` rows."""
        return counts_in_blocks(self.function, model, top, targets, k, tie_mode, rows)


def counts_in_blocks(function, model, top, targets, k, tie_mode, rows):
    """(hits, reciprocal sums) of a GRU4Rec step's rows: `function` (block_counts, or it compiled) over
    blocks of `rows` rows."""
    hits = reciprocal = 0
    for lo in range(0, len(top), rows):
        h, r = function(top[lo:lo + rows], model.Wy, model.By, targets[lo:lo + rows], k, tie_mode)
        hits, reciprocal = hits + h, reciprocal + r
    return hits, reciprocal


class EvaluationGraph(GraphReplay):
    """The evaluation's full-batch step (`full_batch_step`) captured as a CUDA graph and replayed (issue
    #31's evaluation with fixed shapes: every step with all slots live has the same shapes, and its counts
    stay on the device). One per evaluate() call; the epoch's tail, where the batch shrinks, runs uncaptured.
    A capture that fails warns once and the evaluation runs uncaptured (`failed`)."""

    failed = False
    what, instead = 'the evaluation step', 'evaluating without the graph'


def full_batch_step(model, k, tie_mode, rows, inputs, reset, targets, *hidden):
    """One evaluation step of a GRU4Rec model with static shapes: (hits, reciprocal sums, new hidden state);
    the states of the rows in `reset` start from zero."""
    hidden = model.hidden_step(inputs, [h.masked_fill(reset[:, None], 0.0) for h in hidden])
    return (*counts_in_blocks(block_counts, model, hidden[-1], targets, k, tie_mode, rows), hidden)


_compiled_blocks = None


def compiled_blocks(model):
    """The compiled block function for a GRU4Rec model, or None (another model, or compiling failed)."""
    global _compiled_blocks
    if not isinstance(model, GRU4Rec) or CompiledBlocks.failed:
        return None
    if _compiled_blocks is None:
        _compiled_blocks = CompiledBlocks()
    return _compiled_blocks


@torch.no_grad()
def evaluate(model, data, cutoffs=DEFAULT_CUTOFFS, tie_mode='standard', batch_size=512, device='cpu', compiled=False,
             graphs=None):
    """Evaluate a GRU4Rec model (or a baseline of baselines.py) on a SessionData read with its item map.
    compiled: score and rank GRU4Rec's blocks with the compiled block function (module docstring).
    graphs: a CUDA graph API (devices.CudaGraphs; None: no capture): replay GRU4Rec's full-batch steps
    from a CUDA graph (EvaluationGraph; it takes precedence over `compiled`).

    Returns {'Recall@K': .., 'MRR@K': .., 'n_predictions': .., 'tie_mode': ..}.
    """
    if tie_mode not in TIE_MODES:
        raise ValueError(f'unknown tie mode {tie_mode!r}: expected one of {", ".join(TIE_MODES)}')
    if not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()):
        raise ValueError('the model has non-finite weights (NaN or inf): it cannot be evaluated')
    was_training = model.training
    model.eval()
    cutoffs = sorted(set(int(k) for k in cutoffs))
    k = torch.tensor(cutoffs, dtype=torch.float64, device=device)
    hits = torch.zeros(len(cutoffs), dtype=torch.float64, device=device)
    reciprocal = torch.zeros(len(cutoffs), dtype=torch.float64, device=device)
    iterator = SessionParallelIterator(data, batch_size)
    rows = score_rows(len(data.item_map), device)
    hidden = model.init_hidden(iterator.n_slots, device)
    blocks = compiled_blocks(model) if compiled else None
    graph = EvaluationGraph(graphs) if graphs is not None and isinstance(model, GRU4Rec) else None
    no_reset = torch.zeros(iterator.n_slots, dtype=torch.bool, device=device)

    def step(*tensors):
        return full_batch_step(model, k, tie_mode, rows, *tensors)

    for inputs, targets, reset, keep in iterator.torch_steps(device):
        if keep is not None:
            hidden = [h[keep] for h in hidden]
            graph = None            # the tail, where the batch shrinks: uncaptured (each row is ranked alone)
        if graph is not None:
            step_hits, step_reciprocal, hidden = graph.replay(
                (model,), step, (inputs, no_reset if reset is None else reset, targets, *hidden))
            hits += step_hits
            reciprocal += step_reciprocal
            continue
        if reset is not None:
            hidden = [h.masked_fill(reset[:, None], 0.0) for h in hidden]
        hidden = model.hidden_step(inputs, hidden)
        top = hidden[-1]
        if blocks is not None:
            try:
                with compilation_timer(lambda seconds: print(f'compiled the evaluation in {seconds:.1f} s')):
                    step_hits, step_reciprocal = blocks(model, top, targets, k, tie_mode, rows)
            except Exception as err:        # no C++ compiler, an operator Inductor cannot take, ...
                CompiledBlocks.failed, blocks = True, None
                fallback_warning('the evaluation did not compile', err, 'evaluating eagerly')
            else:
                hits += step_hits
                reciprocal += step_reciprocal
                continue
        ranks = torch.cat([target_ranks(model.score_all(top[lo:lo + rows]), targets[lo:lo + rows], tie_mode)
                           for lo in range(0, len(targets), rows)]).double()
        within = ranks[:, None] <= k                               # (M, len(cutoffs))
        hits += within.sum(0)
        reciprocal += torch.where(within, 1.0 / ranks[:, None], 0.0).sum(0, dtype=torch.float64)
    model.train(was_training)
    n = iterator.n_targets
    out = {}
    for i, cutoff in enumerate(cutoffs):
        out[f'Recall@{cutoff}'] = hits[i].item() / n
        out[f'MRR@{cutoff}'] = reciprocal[i].item() / n
    out['n_predictions'] = n
    out['tie_mode'] = tie_mode
    return out
