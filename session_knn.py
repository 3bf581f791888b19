"""The session-based nearest-neighbour family: SKNN, V-SKNN, STAN and VSTAN (issue #33).

The models that Ludewig, Latifi and Jannach measure GRU4Rec against (RecSys 2019; UMUAI 2021, "Empirical
analysis of session-based recommendation algorithms"; their code rn5l/session-rec, `algorithms/knn/`:
ContextKNN, VMContextKNN, STAN, VSKNN_STAN). Each scores the items of the training sessions most similar to
the current session s (all its clicks so far, up to max_seq_length of them):

1. candidates: the training sessions holding any item of s; with sample_size m > 0 only the m most recent of
   them (by their last click; `sampling='random'`: m drawn at random);
2. similarity sim(s, n) of each candidate, the k most similar kept;
3. score(i) = sum over the k neighbours n holding i of sim(s, n) * w(s, n, i).

* SKNN (ContextKNN; Jannach & Ludewig, RecSys 2017, Eq. 1-2): sets of distinct items, w = 1;
  jaccard |s & n| / |s | n|, cosine |s & n| / sqrt(|s| |n|), binary 2|s & n| / (2|s & n| + |s| + |n|).
* V-SKNN (VMContextKNN; Ludewig & Jannach, UMUAI 2018, section 2.2): the click at position p of a session of
  L clicks weighs `weighting`(p, L): same 1, div p/L, linear 1 - 0.1 (L - p) for p <= 10 (else 0),
  quadratic (p/L)^2, log 1 / log10(L - p + 1.7); an item clicked twice takes its last position's weight.
  sim: vec = sum of the weights of the shared items / |s|, or cosine = that sum / (sqrt(sum of the squared
  weights of s's items) sqrt(|n|)); only neighbours with sim > 0. w = `weighting_score`(q) * (1 + idf_weighting
  idf(i)), q = 1 + the number of clicks of s after its last click on an item of n: same 1, div 1/q,
  linear 1 - 0.1 q (q <= 100, else 0), quadratic 1/q^2, log 1 / log10(q + 1.7); idf(i) = ln(#training
  sessions / #clicks on i) (session-rec counts clicks, not sessions).
* STAN (Garg et al., SIGIR 2019, Eq. 2-6; session-rec `STAN`): position weights exp((p - L) / lambda_spw)
  (lambda_1) in the cosine above; sim times exp(-(t - t_n) / lambda_snh) (lambda_2, in days; t_n = n's last
  click, t = now); w = exp(-|pos_n(i) - pos_n*| / lambda_inh) (lambda_3), pos_n(i) the last position of i in
  n and pos_n* the last position in n of any item of s.
* VSTAN (Ludewig et al., UMUAI 2021, section 3; session-rec `VSKNN_STAN`): STAN, and w also times
  exp((p* - L) / lambda_ipw) (p* = the last position in s of an item of n, V-SKNN's q as an exponential)
  and (1 + lambda_idf idf(i)).

`remind` (V-SKNN, STAN, VSTAN): items of s itself may be recommended (False: they score 0).
A lambda of 0 switches its decay off (weight 1); idf_weighting / lambda_idf 0 switch the idf off.

Deliberate differences from session-rec, none of which changes a ranking except the tie rules:
* t: STAN multiplies every candidate of s by exp(-(t - t_n) / lambda_snh), and session-rec's evaluation passes
  for t the time of the click being predicted. The factor exp(-(t - t_max) / lambda_snh) is common to all
  candidates of a prediction, so we use t = t_max, the last training click, and need no test times: same
  neighbours, same order, scores scaled by one constant per prediction.
* ties, where session-rec follows the iteration order of a Python set (the hash of the session ids): among
  candidates of equal recency the higher training-session index counts as more recent; among neighbours of
  equal similarity the more recent one wins. scripts/session_rec_check.py runs session-rec's classes with
  these tie rules patched in to show the equality, and as they are to measure the effect.
* SKNN's `cosine` in session-rec computes |s & n| / sqrt(|n|) * sqrt(|s|) (operator precedence); that is
  the cosine times |s|, the same factor for every neighbour of a prediction: same ranking; ours is the cosine.
* not implemented (off by default in session-rec): SKNN's remind / pop_boost, V-SKNN's dwelling time,
  last_n_days, last_n_clicks, push / add reminders, weighting_time, idf_weighting_session; `extend` (adding
  test sessions to the training sessions while evaluating); `normalize` (scores / their maximum: no ranking
  change).

Vectorised (no Python loop per session or per neighbour): fit builds an inverted index, the training
sessions of each item, most recent first, cut to the m most recent per item under recent sampling (the m
most recent sessions of a union are among the m most recent of each of its lists, so nothing is lost), and
each session's distinct items with their last position. A batch of predictions expands its items' lists
into (row, candidate) pairs whose sums over shared items are the overlaps, keeps the m most recent pairs and
the k most similar of each row, and scatters the neighbours' items into a dense (rows x N) score table.
Fitted tables are buffers, so a model saves and loads through the same checkpoint as every other model.
"""

import numpy as np
import torch

from baselines import Baseline
from comparison_models import SequenceModel

SIMILARITIES = {'SKNN': ('jaccard', 'cosine', 'binary'), 'VSKNN': ('vec', 'cosine'),
                'STAN': ('cosine',), 'VSTAN': ('cosine',)}
WEIGHTINGS = ('same', 'div', 'linear', 'quadratic', 'log')
SAMPLINGS = ('recent', 'random')


def position_weight(name, p, length):
    """V-SKNN's weight of the click at position p (1-based) of a session of `length` clicks."""
    if name == 'same':
        return torch.ones_like(p, dtype=torch.float64)
    p, length = p.double(), length.double()
    if name == 'div':
        return p / length
    if name == 'linear':
        return torch.where(p <= 10, 1 - 0.1 * (length - p), 0.0)
    if name == 'quadratic':
        return (p / length) ** 2
    if name == 'log':
        return 1 / torch.log10(length - p + 1.7)
    raise ValueError(f'unknown weighting {name!r}: expected one of {", ".join(WEIGHTINGS)}')


def recency_weight(name, q):
    """V-SKNN's weight of a neighbour found q clicks back from the end of the session (q = 1: the last)."""
    q = q.double()
    if name == 'same':
        return torch.ones_like(q)
    if name == 'div':
        return 1 / q
    if name == 'linear':
        return torch.where(q <= 100, 1 - 0.1 * q, 0.0)
    if name == 'quadratic':
        return 1 / (q * q)
    if name == 'log':
        return 1 / torch.log10(q + 1.7)
    raise ValueError(f'unknown weighting_score {name!r}: expected one of {", ".join(WEIGHTINGS)}')


def exp_decay(distance, lam):
    """exp(-distance / lam), or 1 where lam is 0 (the decay switched off)."""
    return torch.exp(-distance.double() / lam) if lam else torch.ones_like(distance, dtype=torch.float64)


def segment_ranks(rows, n_rows):
    """For entries sorted by row: each entry's index within its row's run (0, 1, ...)."""
    counts = torch.bincount(rows, minlength=n_rows)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(len(rows), device=rows.device) - starts[rows], counts


def expand(offsets, owners):
    """CSR expansion: for each owner o, the positions offsets[o] .. offsets[o+1]-1; (positions, entry -> owner)."""
    starts, counts = offsets[owners], offsets[owners + 1] - offsets[owners]
    of = torch.repeat_interleave(torch.arange(len(owners), device=owners.device), counts)
    return starts[of] + torch.arange(len(of), device=of.device) - (torch.cumsum(counts, 0) - counts)[of], of


class SessionKNN(Baseline):
    """The shared part: the inverted index, the candidate sample, the top-k neighbours and the scoring."""
    kind = 'SKNN'
    _tables = ('session_offsets', 'session_items', 'session_last', 'end_time', 'item_offsets', 'postings', 'idf')
    init_hidden = SequenceModel.init_hidden       # the state: [count, the session's last max_seq_length clicks]
    hidden_step = SequenceModel.hidden_step

    def __init__(self, n_items, k, sample_size, sampling, similarity, remind, max_seq_length, seed):
        super().__init__()
        if similarity not in SIMILARITIES[self.kind]:
            raise ValueError(f'{self.kind}: unknown similarity {similarity!r}: expected one of '
                             f'{", ".join(SIMILARITIES[self.kind])}')
        if sampling not in SAMPLINGS:
            raise ValueError(f'{self.kind}: unknown sampling {sampling!r}: expected one of {", ".join(SAMPLINGS)}')
        self.n_items, self.k, self.sample_size, self.sampling = n_items, k, sample_size, sampling
        self.similarity, self.remind, self.max_seq_length = similarity, remind, max_seq_length
        self.generator = torch.Generator().manual_seed(seed)
        for name in self._tables:                 # sized by fit (or by a checkpoint's tables at load)
            self.register_buffer(name, torch.zeros(0, dtype=torch.float64 if name in ('end_time', 'idf')
                                                   else torch.long))
        self.register_buffer('t_max', torch.zeros((), dtype=torch.float64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self._tables:                 # take the checkpoint's sizes, then load as usual
            if prefix + name in state_dict:
                self._buffers[name] = torch.empty_like(state_dict[prefix + name], device=self.t_max.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- fit: the tables
    def fit(self, data, **_):
        """Sessions renumbered by recency (last click, then index); each one's distinct items with their last
        position; each item's sessions, most recent first (the m most recent under recent sampling)."""
        n_sessions, n = data.n_sessions, self.n_items
        order = np.lexsort((np.arange(n_sessions), data.end_time))       # oldest first
        rank = np.empty(n_sessions, dtype=np.int64)
        rank[order] = np.arange(n_sessions)
        lengths = np.diff(data.offsets)
        session = np.repeat(rank, lengths)
        position = np.arange(len(data.items)) - np.repeat(data.offsets[:-1], lengths) + 1
        key = session * n + data.items
        by_key = np.lexsort((position, key))
        last = np.r_[key[by_key][1:] != key[by_key][:-1], True]          # the last click of each (session, item)
        distinct = by_key[last]                  # sorted by (session rank, item)
        d_session, d_item, d_last = session[distinct], data.items[distinct], position[distinct]
        session_offsets = np.r_[0, np.cumsum(np.bincount(d_session, minlength=n_sessions))]
        by_item = np.lexsort((-d_session, d_item))                         # item, then most recent first
        p_item, p_session = d_item[by_item], d_session[by_item]
        if self.sampling == 'recent' and self.sample_size > 0:
            within = np.arange(len(p_item)) - np.repeat(np.r_[0, np.cumsum(np.bincount(p_item, minlength=n))][:-1],
                                                        np.bincount(p_item, minlength=n))
            p_item, p_session = p_item[within < self.sample_size], p_session[within < self.sample_size]
        item_offsets = np.r_[0, np.cumsum(np.bincount(p_item, minlength=n))]
        clicks = np.bincount(data.items, minlength=n)
        idf = np.log(n_sessions / np.maximum(clicks, 1))
        device = self.t_max.device
        tables = dict(session_offsets=session_offsets, session_items=d_item, session_last=d_last,
                      end_time=data.end_time[order], item_offsets=item_offsets, postings=p_session, idf=idf)
        for name, value in tables.items():
            self._buffers[name] = torch.from_numpy(np.ascontiguousarray(value)).to(
                device, torch.float64 if name in ('end_time', 'idf') else torch.long)
        self.t_max = torch.tensor(float(data.end_time.max()), dtype=torch.float64, device=device)
        yield None

    # ---- the model-specific parts
    def click_weights(self, position, length):
        """Weight of each distinct item of s from its last position (SKNN: sets, 1)."""
        return torch.ones_like(position, dtype=torch.float64)

    def similarity_of(self, overlap, weights_sq, size, neighbour_size, neighbour):
        """sim(s, n) from the weighted overlap, s's sum of squared weights and distinct count, |n|."""
        n_size = neighbour_size.double()
        if self.similarity == 'jaccard':
            return overlap / (size + n_size - overlap)
        if self.similarity == 'binary':
            return 2 * overlap / (2 * overlap + size + n_size)
        return overlap / (torch.sqrt(weights_sq) * torch.sqrt(n_size))         # cosine

    def neighbour_weight(self, latest, length):
        """A factor per neighbour from p*, the last position in s of an item of n (V-SKNN, VSTAN)."""
        return None

    def item_weight(self, items, last_position, star):
        """A factor per (neighbour, item) from the item's last position in n and pos_n* (STAN, VSTAN)."""
        return None

    # ---- scoring
    def score_all(self, state):
        """Scores (rows, N) of every item for each session state (float64; 0 for items no neighbour holds)."""
        device, n = state.device, self.n_items
        m = self.sample_size
        lengths = state[:, 0]
        width = int(lengths.max())
        n_rows = len(state)
        valid = torch.arange(width, device=device)[None, :] < lengths[:, None]
        row, column = valid.nonzero(as_tuple=True)
        key = row * n + state[:, 1:width + 1][row, column]
        order = torch.argsort(key * width + column)
        key, position = key[order], column[order] + 1
        last = torch.ones(len(key), dtype=torch.bool, device=device)
        last[:-1] = key[1:] != key[:-1]
        key, position = key[last], position[last]                  # distinct (row, item), its last position
        g_row, g_item = key // n, key % n
        weight = self.click_weights(position, lengths[g_row])
        weights_sq = torch.zeros(n_rows, dtype=torch.float64, device=device).index_add_(0, g_row, weight * weight)
        size = torch.bincount(g_row, minlength=n_rows).double()
        # candidates: (row, session) pairs over the rows' items; overlap = the summed weights of shared items
        entries, of = expand(self.item_offsets, g_item)
        n_sessions = len(self.end_time)
        pairs, inverse = torch.unique(g_row[of] * n_sessions + self.postings[entries], return_inverse=True)
        overlap = torch.zeros(len(pairs), dtype=torch.float64, device=device).index_add_(0, inverse, weight[of])
        latest = torch.zeros(len(pairs), dtype=torch.long, device=device).scatter_reduce_(
            0, inverse, position[of], 'amax')
        p_row, p_session = pairs // n_sessions, pairs % n_sessions
        if m > 0:                                    # the m most recent (or m random) candidates of each row
            if self.sampling == 'recent':
                from_end = segment_ranks(p_row, n_rows)
                keep = (from_end[1][p_row] - 1 - from_end[0]) < m
            else:
                priority = torch.rand(len(pairs), generator=self.generator, dtype=torch.float64).to(device)
                by_priority = torch.sort(priority, descending=True, stable=True).indices
                by_priority = by_priority[torch.sort(p_row[by_priority], stable=True).indices]
                keep = torch.zeros(len(pairs), dtype=torch.bool, device=device)
                keep[by_priority[segment_ranks(p_row[by_priority], n_rows)[0] < m]] = True
            p_row, p_session, overlap, latest = p_row[keep], p_session[keep], overlap[keep], latest[keep]
        neighbour_size = self.session_offsets[p_session + 1] - self.session_offsets[p_session]
        sim = self.similarity_of(overlap, weights_sq[p_row], size[p_row], neighbour_size, p_session)
        keep = sim > 0     # (session-rec's STAN keeps the others too: its sims are >= 0 and a 0 adds nothing)
        p_row, p_session, sim, latest = p_row[keep], p_session[keep], sim[keep], latest[keep]
        # the k most similar of each row: by similarity, ties to the more recent session
        order = torch.sort(p_session, descending=True, stable=True).indices
        order = order[torch.sort(sim[order], descending=True, stable=True).indices]
        order = order[torch.sort(p_row[order], stable=True).indices]
        order = order[segment_ranks(p_row[order], n_rows)[0] < self.k]
        p_row, p_session, sim, latest = p_row[order], p_session[order], sim[order], latest[order]
        factor = self.neighbour_weight(latest, lengths[p_row])
        # every distinct item of every neighbour, in neighbour order (the order session-rec sums them in)
        entries, of = expand(self.session_offsets, p_session)
        items, rows = self.session_items[entries], p_row[of]
        in_session = torch.zeros(len(items), dtype=torch.bool, device=device)
        if len(key):
            at = torch.searchsorted(key, rows * n + items).clamp_(max=len(key) - 1)
            in_session = key[at] == rows * n + items
        value = sim[of]
        per_item = self.item_weight(items, self.session_last[entries], (of, in_session, len(p_session)))
        if per_item is not None:
            value = per_item(value)
        if factor is not None:
            value = value * factor[of]
        if not self.remind:
            value = torch.where(in_session, 0.0, value)
        scores = torch.zeros(n_rows * n, dtype=torch.float64, device=device)
        return scores.index_add_(0, rows * n + items, value).view(n_rows, n)


class SKNN(SessionKNN):
    """SKNN (session-rec ContextKNN): distinct-item sets, jaccard / cosine / binary similarity; the items of s
    score like any other (session-rec's SKNN `remind` is another thing, a boost of the last 3 clicks: off)."""

    def __init__(self, n_items, k=100, sample_size=1000, sampling='recent', similarity='jaccard', max_seq_length=200,
                 seed=42):
        super().__init__(n_items, k, sample_size, sampling, similarity, True, max_seq_length, seed)


class VSKNN(SessionKNN):
    """V-SKNN (session-rec VMContextKNN): position-weighted similarity, recency-weighted and idf scores."""
    kind = 'VSKNN'

    def __init__(self, n_items, k=100, sample_size=1000, sampling='recent', similarity='vec', weighting='div',
                 weighting_score='div', idf_weighting=0.0, remind=True, max_seq_length=200, seed=42):
        super().__init__(n_items, k, sample_size, sampling, similarity, remind, max_seq_length, seed)
        for flag, name in (('weighting', weighting), ('weighting_score', weighting_score)):
            if name not in WEIGHTINGS:
                raise ValueError(f'V-SKNN: unknown {flag} {name!r}: expected one of {", ".join(WEIGHTINGS)}')
        self.weighting, self.weighting_score, self.idf_weighting = weighting, weighting_score, idf_weighting

    def click_weights(self, position, length):
        return position_weight(self.weighting, position, length)

    def similarity_of(self, overlap, weights_sq, size, neighbour_size, neighbour):
        if self.similarity == 'vec':
            return overlap / size
        return super().similarity_of(overlap, weights_sq, size, neighbour_size, neighbour)

    def neighbour_weight(self, latest, length):
        return recency_weight(self.weighting_score, length - latest + 1)

    def item_weight(self, items, last_position, star):
        if not self.idf_weighting:
            return None
        idf = self.idf[items]
        return lambda value: value + value * idf * self.idf_weighting


class STAN(SessionKNN):
    """STAN (Garg et al. 2019; session-rec STAN): exponential position, time and neighbour-position decays."""
    kind = 'STAN'

    def __init__(self, n_items, k=100, sample_size=5000, sampling='recent', lambda_spw=1.02, lambda_snh=5.0,
                 lambda_inh=2.05, remind=True, max_seq_length=200, seed=42):
        super().__init__(n_items, k, sample_size, sampling, 'cosine', remind, max_seq_length, seed)
        self.lambda_spw, self.lambda_snh, self.lambda_inh = lambda_spw, lambda_snh, lambda_inh

    def click_weights(self, position, length):
        return exp_decay(length - position, self.lambda_spw)

    def similarity_of(self, overlap, weights_sq, size, neighbour_size, neighbour):
        sim = super().similarity_of(overlap, weights_sq, size, neighbour_size, neighbour)
        return sim * exp_decay(self.t_max - self.end_time[neighbour], self.lambda_snh * 86400.0)

    def item_weight(self, items, last_position, star):
        of, in_session, n_neighbours = star
        if not self.lambda_inh:
            return None
        star_position = torch.zeros(n_neighbours, dtype=torch.long, device=items.device).scatter_reduce_(
            0, of, torch.where(in_session, last_position, 0), 'amax')
        decay = exp_decay((last_position - star_position[of]).abs(), self.lambda_inh)
        return lambda value: value * decay


class VSTAN(STAN):
    """VSTAN (Ludewig et al. 2021; session-rec VSKNN_STAN): STAN with V-SKNN's recency weight and idf."""
    kind = 'VSTAN'

    def __init__(self, n_items, k=100, sample_size=5000, sampling='recent', lambda_spw=1.02, lambda_snh=5.0,
                 lambda_inh=2.05, lambda_ipw=1.02, lambda_idf=5.0, remind=True, max_seq_length=200, seed=42):
        super().__init__(n_items, k, sample_size, sampling, lambda_spw, lambda_snh, lambda_inh, remind,
                         max_seq_length, seed)
        self.lambda_ipw, self.lambda_idf = lambda_ipw, lambda_idf

    def neighbour_weight(self, latest, length):
        return exp_decay(length - latest, self.lambda_ipw) if self.lambda_ipw else None

    def item_weight(self, items, last_position, star):
        stan = super().item_weight(items, last_position, star)
        if not self.lambda_idf:
            return stan
        idf = self.idf[items]

        def weigh(value):
            value = value if stan is None else stan(value)
            return value + value * idf * self.lambda_idf
        return weigh


SESSION_KNN = {'SKNN': SKNN, 'VSKNN': VSKNN, 'STAN': STAN, 'VSTAN': VSTAN}
# defaults: session-rec's class defaults (k: their docstrings' 100), which are the papers' settings
SESSION_KNN_DEFAULTS = {
    'SKNN': dict(k=100, sample_size=1000, sampling='recent', similarity='jaccard', max_seq_length=200, seed=42),
    'VSKNN': dict(k=100, sample_size=1000, sampling='recent', similarity='vec', weighting='div',
                  weighting_score='div', idf_weighting=0.0, remind=True, max_seq_length=200, seed=42),
    'STAN': dict(k=100, sample_size=5000, sampling='recent', lambda_spw=1.02, lambda_snh=5.0, lambda_inh=2.05,
                 remind=True, max_seq_length=200, seed=42),
    'VSTAN': dict(k=100, sample_size=5000, sampling='recent', lambda_spw=1.02, lambda_snh=5.0, lambda_inh=2.05,
                  lambda_ipw=1.02, lambda_idf=5.0, remind=True, max_seq_length=200, seed=42),
}
