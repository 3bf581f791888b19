"""The baselines of the GRU4Rec papers: POP, S-POP, Item-KNN and BPR-MF (ICLR'16 Table 1; spec E).

Each follows the authors' baseline classes (hidasib/GRU4Rec `baselines.py`: Pop, PersonalPop,
CoOccurence / Cosine, BPR), fitted on the training SessionData and scored by evaluation.py exactly like
GRU4Rec: session-parallel, every non-first test click ranked against all N training items, same ties.
A baseline is a torch module with GRU4Rec's evaluation interface: `init_hidden`, `hidden_step` (the
per-session state after reading one more click; evaluate() zeroes it when a slot starts a new session)
and `score_all` (scores of all items from that state). Fitted tables are buffers, so a baseline saves
and loads through the same checkpoint as GRU4Rec.

* POP (spec E2.2): score(i) = supp(i) / (1 + supp(i)) for the `top_n` (100) most clicked items, 0 else.
* S-POP (spec E2.3): score(i) = clicks on i so far in the session (current click included) + POP(i).
* Item-KNN (spec E2.4): c(i, j) = number of (click on i, session) pairs whose session also holds j, i.e.
  sum over sessions of n_s(i) * [j in s]: every click on i counts, j once per session, because the
  official `iarray[items of the session] += 1` adds 1 once per distinct index (spec E2.4's "multiplicities
  multiply" is not what the code does; this rule reproduces its Recall@20 / MRR@20 on the sample, 0.4733 /
  0.1936, to four decimals). c(i, i) = 0; sim(i, j) = c(i, j) / ((supp_i + lmbd)^alpha * (supp_j +
  lmbd)^(1 - alpha)); the `n_sims` (100) most similar items are kept per item; score(j) = sim(current
  item, j) when j is on its list, else 0.
* BPR-MF (spec E2.5): training sessions are the users; each epoch visits every training click in random
  order with an SGD step on ln sigmoid(u . (p - n)), factors drawn from U(-sigma, sigma); at prediction
  the session vector is the mean of the item factors of the session's clicks so far.

Deliberate differences: ties in the top-100 cut (POP and the Item-KNN lists) keep the lower item index
(the official code's unstable sort keeps an arbitrary one). Item-KNN's similarities are stored as
float32. BPR-MF applies its SGD steps `batch_size` clicks at a time, each computed from the factors
before the batch and summed where rows repeat (the official per-click Python loop would take hours
at RSC15 scale; batch_size=1 is that exact loop; on the sample, batch sizes 1, 16, 256 and 1024 give the
same Recall@20 and MRR@20 to four decimals, 0.4229 / 0.2673); its item bias, never updated by the official code, is
left out; its negative item is, as in the official code, the item of a random one of the first N
training clicks (N = number of items), not a uniform item: `negatives='uniform'` switches to uniform.
"""
import math

import numpy as np
import torch
import torch.nn as nn


class Baseline(nn.Module):
    """Common part: the evaluation interface and the popularity table POP and S-POP share."""

    def init_hidden(self, batch_size, device='cpu'):
        return [torch.zeros(batch_size, self.state_width, device=device)]

    def hidden_step(self, inputs, hidden):
        return hidden

    def fit(self, data, **_):
        """Fit on a training SessionData; yields once per epoch (loss or None) for checkpoints."""
        raise NotImplementedError


def top_popularity(support, top_n):
    """supp / (1 + supp) for the top_n most supported items, 0 for the rest (spec E2.2)."""
    support = torch.as_tensor(support, dtype=torch.float64)
    scores = torch.zeros_like(support)
    top = torch.from_numpy(np.argsort(-support.numpy(), kind='stable')[:top_n])
    scores[top] = support[top] / (1.0 + support[top])
    return scores.float()


class Pop(Baseline):
    """POP: the same top-100 popularity list for every prediction."""
    state_width = 1

    def __init__(self, n_items, top_n=100):
        super().__init__()
        self.top_n = top_n
        self.register_buffer('popularity', torch.zeros(n_items))

    def fit(self, data, **_):
        self.popularity.copy_(top_popularity(data.item_support(), self.top_n))
        yield None

    def score_all(self, state):
        return self.popularity.expand(len(state), -1)


class SessionPop(Pop):
    """S-POP: clicks on each item in the session so far, plus POP. The state is the count vector (B, N)."""

    def __init__(self, n_items, top_n=100):
        super().__init__(n_items, top_n)
        self.state_width = n_items

    def hidden_step(self, inputs, hidden):
        counts = hidden[0]
        counts[torch.arange(len(inputs), device=inputs.device), inputs] += 1.0
        return [counts]

    def score_all(self, state):
        return state + self.popularity


class ItemKNN(Baseline):
    """Item-KNN: the current item's n_sims most similar items by regularised co-occurrence."""
    state_width = 1

    def __init__(self, n_items, n_sims=100, lmbd=20.0, alpha=0.5):
        super().__init__()
        self.n_items, self.n_sims, self.lmbd, self.alpha = n_items, min(n_sims, n_items), lmbd, alpha
        self.register_buffer('neighbours', torch.zeros(n_items, self.n_sims, dtype=torch.long))
        self.register_buffer('similarity', torch.zeros(n_items, self.n_sims))

    def hidden_step(self, inputs, hidden):
        return [inputs[:, None]]                  # the state is the current item

    def score_all(self, state):
        current = state[:, 0].long()
        scores = torch.zeros(len(current), self.n_items, device=current.device)
        return scores.scatter_(1, self.neighbours[current], self.similarity[current])

    def fit(self, data, max_cells=1 << 24, **_):
        """All co-occurrences, a block of items at a time: the clicks of the block's items are paired with
        every distinct item of their sessions and counted into a dense (block x N) table (at most max_cells),
        normalised, and cut to the top n_sims. Vectorised; memory bounded by the block."""
        n, items, offsets = self.n_items, data.items, data.offsets
        session = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        support = np.bincount(items, minlength=n).astype(np.float64)
        distinct = np.unique(session * n + items)           # each session's items, once each
        distinct_items = distinct % n
        lengths = np.bincount(distinct // n, minlength=len(offsets) - 1)
        offsets = np.r_[0, np.cumsum(lengths)]
        by_item = np.argsort(items, kind='stable')
        item_start = np.r_[0, np.cumsum(support.astype(np.int64))]
        pairs = np.bincount(items, weights=lengths[session], minlength=n)     # pairs per item row
        pair_start = np.r_[0, np.cumsum(pairs)]
        rows_per_block = max(1, max_cells // n)
        column_norm = (support + self.lmbd) ** (1.0 - self.alpha)
        first = 0
        while first < n:
            last = min(n, first + rows_per_block)             # also bound the pairs of one block
            last = max(first + 1, min(last, int(np.searchsorted(pair_start, pair_start[first] + max_cells,
                                                                  side='right')) - 1))
            clicks = by_item[item_start[first]:item_start[last]]
            sessions = session[clicks]
            width = lengths[sessions]
            row = np.repeat(items[clicks] - first, width)
            position = np.repeat(offsets[sessions] - np.cumsum(width) + width, width) + np.arange(width.sum())
            counts = np.bincount(row * n + distinct_items[position], minlength=(last - first) * n)
            counts = counts.reshape(last - first, n).astype(np.float64)
            counts[np.arange(last - first), np.arange(first, last)] = 0.0
            norm = ((support[first:last] + self.lmbd) ** self.alpha)[:, None] * column_norm[None, :]
            norm[norm == 0] = 1.0
            values, indices = top_k(torch.from_numpy(counts / norm), self.n_sims)
            self.neighbours[first:last] = indices.to(self.neighbours.device)
            self.similarity[first:last] = values.float().to(self.similarity.device)
            first = last
        yield None


def top_k(matrix, k):
    """The k largest values of each row, largest first, and their column indices; among equal values the
    lower column index wins, also at the cut (torch.topk alone picks an arbitrary one of tied values)."""
    kth = torch.topk(matrix, k, dim=1).values[:, -1:]
    above, tied = matrix > kth, matrix == kth
    room = k - above.sum(1, keepdim=True)
    chosen = above | (tied & (tied.cumsum(1) <= room))
    indices = chosen.nonzero()[:, 1].view(len(matrix), k)           # ascending column order per row
    values, order = torch.sort(matrix.gather(1, indices), dim=1, descending=True, stable=True)
    return values, indices.gather(1, order)


class BPRMF(Baseline):
    """BPR-MF with sessions as users; predicts from the mean item factor of the session so far."""

    def __init__(self, n_items, n_factors=100, n_epochs=10, lr=0.01, lambda_session=0.0, lambda_item=0.0,
                 sigma=0.05, batch_size=1024, negatives='first_rows', seed=42):
        super().__init__()
        if negatives not in ('first_rows', 'uniform'):
            raise ValueError(f'unknown BPR-MF negatives {negatives!r}: expected first_rows or uniform')
        self.n_factors, self.n_epochs, self.lr = n_factors, n_epochs, lr
        self.lambda_session, self.lambda_item, self.sigma = lambda_session, lambda_item, sigma
        self.batch_size, self.negatives, self.seed = batch_size, negatives, seed
        self.state_width = n_factors + 1          # sum of the seen items' factors, then their count
        self.register_buffer('item_factors', torch.zeros(n_items, n_factors))

    def hidden_step(self, inputs, hidden):
        state = hidden[0]
        return [state + torch.nn.functional.pad(self.item_factors[inputs], (0, 1), value=1.0)]

    def score_all(self, state):
        session_vector = state[:, :-1] / state[:, -1:]
        return session_vector @ self.item_factors.T

    def fit(self, data, **_):
        """n_epochs of SGD; yields the mean ln sigmoid(u . (p - n)) of each epoch."""
        rng = np.random.default_rng(self.seed)
        n_items, device = len(self.item_factors), self.item_factors.device
        items = torch.from_numpy(data.items).to(device)
        session = torch.from_numpy(np.repeat(np.arange(data.n_sessions), np.diff(data.offsets))).to(device)
        users = torch.from_numpy(rng.uniform(-self.sigma, self.sigma, (data.n_sessions, self.n_factors))
                                 .astype(np.float32)).to(device)
        self.item_factors.copy_(torch.from_numpy(rng.uniform(-self.sigma, self.sigma, (n_items, self.n_factors))
                                                 .astype(np.float32)))
        factors = self.item_factors
        negative_pool = min(n_items, len(items))
        for _ in range(self.n_epochs):
            order = torch.from_numpy(rng.permutation(len(items))).to(device)
            draws = rng.integers(n_items if self.negatives == 'uniform' else negative_pool, size=len(items))
            negative = torch.from_numpy(draws).to(device)
            if self.negatives == 'first_rows':
                negative = items[negative]
            total = torch.zeros((), dtype=torch.float64, device=device)     # read once an epoch: no GPU stall
            for start in range(0, len(items), self.batch_size):
                batch = order[start:start + self.batch_size]
                u, p, n = session[batch], items[batch], negative[start:start + self.batch_size]
                user, positive, other = users[u], factors[p], factors[n]
                log_sigmoid = torch.nn.functional.logsigmoid((user * (positive - other)).sum(1))
                c = (1.0 - log_sigmoid.exp())[:, None]
                users.index_add_(0, u, self.lr * (c * (positive - other) - self.lambda_session * user))
                factors.index_add_(0, p, self.lr * (c * user - self.lambda_item * positive))
                factors.index_add_(0, n, self.lr * (-c * user - self.lambda_item * other))
                total += log_sigmoid.sum()
            loss = total.item() / len(items)
            if not math.isfinite(loss):
                raise FloatingPointError('BPR-MF diverged (NaN); try a lower --lr')
            yield loss


BASELINES = {'POP': Pop, 'SPOP': SessionPop, 'ItemKNN': ItemKNN, 'BPRMF': BPRMF}
# hyper-parameters of each baseline (spec E2; BPR-MF n_factors 100 as in the ICLR'16 runs)
BASELINE_DEFAULTS = {
    'POP': dict(top_n=100),
    'SPOP': dict(top_n=100),
    'ItemKNN': dict(n_sims=100, lmbd=20.0, alpha=0.5),
    'BPRMF': dict(n_factors=100, n_epochs=10, lr=0.01, lambda_session=0.0, lambda_item=0.0, sigma=0.05,
                  batch_size=1024, negatives='first_rows', seed=42),
}
