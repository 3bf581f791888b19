"""Recommendations from a trained model: the top-k next items for a session, from any checkpoint main.py saves.

    python recommend.py --load_model checkpoint/<run>/model_00009.pt --input rsc15_test.txt --k 20 --output recs.tsv
    python recommend.py --load_model checkpoint/<run>/model_00009.pt --serve --port 8000

    from recommend import SessionRecommender
    recommender = SessionRecommender.load('checkpoint/<run>/model_00009.pt')
    recommender.recommend(['214536502', '214536500'], k=5)      # [(item id, score), ...] best first
    recommender.click('session-7', '214536502')                 # one step from the cached state

Every model main.py trains (GRU4Rec, the baselines, NARM, STAMP, SASRec, GRU4Rec+) recommends through the
interface the evaluation scores it with (`init_hidden` / `hidden_step` / `score_all`, evaluation.py), so a
recommendation ranks the items exactly as `evaluate()` does for the same prefix (spec C3-C4: the state
after the session's clicks from an all-zero start, raw scores of all N training items, dropout off).
A GRU4Rec session costs one GRU step per click from its cached hidden state; a history model (NARM,
STAMP, SASRec, GRU4Rec+) runs its encoder over the cached history (the last max_seq_length clicks).

Conventions:
* item ids are the original ids of the data files, compared as strings (as dataset.ItemMap does) and
  returned as strings;
* order: score, best first; equal scores by item-map order (first appearance in the training file).
  Within a group of equal scores every item has the evaluation's `standard` rank (1 + the number of items
  scored higher), which the batch command writes as `Rank`;
* unknown item ids are skipped and reported (`.unknown` of the result), never an error mid-batch; a session
  with no known item gets the most clicked training items (score = their training clicks), marked
  `.popular`. That needs the training support, saved in checkpoints since this file exists; for older
  checkpoints give the training file (`train_data=` / `--train_data`), otherwise such a session gets an
  empty list (still marked `.popular`);
* `exclude` removes the given items before the cut (the list is shorter than k only when fewer than k
  items are left).

The HTTP service (--serve, the standard library's http.server) answers in JSON, errors included (4xx with
{"error": ...}, never a traceback), on kept-alive HTTP/1.1 connections, IPv4 or IPv6 (--host ::1). Its limits
are flags (SERVICE_LIMITS, named in the start-up line): --workers threads answer, --queue connections wait
for one and later ones get 503 at once; a request must arrive whole within --request_timeout seconds (408);
bodies up to --max_body_bytes (413), session ids up to --max_id_bytes (400), --max_sessions sessions kept.
"""
import collections
import email.utils
import http.server
import io
import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from queue import SimpleQueue

import numpy as np
import torch

from baselines import top_k
from checkpoints import load_checkpoint
from cli import ArgumentParser, InputError, run_cli, write_atomically
from dataset import ItemMap, SessionData, read_split
from devices import pick_device
from evaluation import SCORE_BLOCK

# --serve's limits (flags of the same names): worker threads; connections waiting for one (beyond: 503);
# seconds to send a whole request; bytes of a body; bytes of a session id (the cache holds --max_sessions)
SERVICE_LIMITS = dict(workers=32, queue=256, request_timeout=10.0, max_body_bytes=64 * 1024, max_id_bytes=256)
CHUNK_SESSIONS = 512          # sessions advanced together by recommend_batch and the batch command


class Recommendations(list):
    """A list of (item_id, score), best first, with `unknown` (the skipped input ids) and `popular` (True
    when the session had no known item and these are the most clicked training items)."""

    def __init__(self, pairs=(), unknown=(), popular=False):
        super().__init__(pairs)
        self.unknown, self.popular = list(unknown), popular


class SessionRecommender:
    """Top-k recommendations of one model, stateless (`recommend`, `recommend_batch`) or per live session
    (`click`, `end`; an LRU cache of at most `max_sessions` session states)."""

    def __init__(self, model, item_ids, support=None, device='cpu', model_name='GRU4Rec', max_sessions=10_000):
        if max_sessions < 1:
            raise ValueError(f'max_sessions must be >= 1, got {max_sessions}')
        self.model, self.device, self.model_name = model.eval(), device, model_name
        self.ids = [str(i) for i in item_ids]
        self.index = {item: i for i, item in enumerate(self.ids)}
        self.item_map = ItemMap(self.ids)
        self.n_items = len(self.ids)
        self.support = None if support is None else np.asarray(support, dtype=np.int64)
        self.popular_order = None if support is None else np.argsort(-self.support, kind='stable')
        self.max_sessions = max_sessions
        self.sessions = collections.OrderedDict()      # session id -> (state, number of known clicks)
        self.lock = threading.Lock()                   # the session cache
        # clicks of one session one at a time (a lock per stripe of session ids); other sessions in parallel
        self.session_locks = [threading.Lock() for _ in range(64)]

    @classmethod
    def load(cls, checkpoint, device='cpu', max_sessions=10_000, train_data=None):
        """Weights, configuration and item map from the checkpoint alone (weights_only loading); the popular
        fallback from the support saved in it, or, for older checkpoints, from `train_data` when given."""
        model, _, item_map, state = load_checkpoint(checkpoint, device)
        if not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()):
            raise InputError(f'--load_model {checkpoint}: the model has non-finite weights (NaN or inf)')
        support = state.get('item_support')
        if support is not None:
            support = support.cpu().numpy()
        elif train_data is not None:
            data = SessionData(train_data)
            if data.item_map.to_list() != item_map.to_list():
                raise InputError(f'--train_data {train_data}: not the training file of {checkpoint} '
                                 f'(its items differ from the checkpoint\'s item map)')
            support = data.item_support()
        return cls(model, item_map.to_list(), support, device, state.get('model_name', 'GRU4Rec'), max_sessions)

    # ---------------------------------------------------------------- stateless

    def recommend(self, items, k=20, exclude=None):
        """Top-k after the session's clicks `items` (original ids, oldest first)."""
        return self.recommend_batch([items], k, None if exclude is None else [exclude])[0]

    def recommend_batch(self, sessions, k=20, exclude=None):
        """recommend() for many sessions (exclude: None or one id list per session), advanced together a
        chunk of sessions at a time, one hidden_step per click position; the same lists as one by one."""
        self._check_k(k)
        out = []
        for lo in range(0, len(sessions), CHUNK_SESSIONS):
            chunk = sessions[lo:lo + CHUNK_SESSIONS]
            known, unknown = zip(*(self._known(items) for items in chunk)) if chunk else ((), ())
            excluded = [self._known(ids)[0] for ids in exclude[lo:lo + CHUNK_SESSIONS]] if exclude else None
            ranked = self._ranked(list(known), k, excluded=excluded)
            out += [Recommendations(pairs[-1], skipped, popular=not items)
                    for pairs, skipped, items in zip(ranked, unknown, known)]
        return out

    # ---------------------------------------------------------------- stateful

    def click(self, session_id, item_id, k=20, exclude=None):
        """Advance `session_id` by one click from its cached state and return its top-k. An unknown item
        leaves the state as it was (reported in `.unknown`). The least recently used session is forgotten
        when more than max_sessions are cached. Thread-safe: clicks of one session are applied one at a
        time, those of different sessions run in parallel."""
        self._check_k(k)
        index = self.index.get(str(item_id))
        excluded = self._known(exclude)[0] if exclude else ()
        with self._lock_of(session_id), torch.inference_mode():
            with self.lock:
                state, n_known = self.sessions.pop(session_id, None) or (None, 0)
            if state is None:
                state = self.model.init_hidden(1, self.device)
            if index is not None:
                state = self.model.hidden_step(torch.tensor([index], device=self.device), state)
                n_known += 1
            with self.lock:
                self.sessions[session_id] = (state, n_known)
                while len(self.sessions) > self.max_sessions:
                    self.sessions.popitem(last=False)
            pairs = self._top(state[-1], k, [excluded])[0] if n_known else self._popular(k, excluded)
        return Recommendations(pairs, [] if index is not None else [str(item_id)], popular=not n_known)

    def end(self, session_id):
        """Forget a session's state; True if it was cached. Under the session's lock, as click(): an end that
        comes during a click of the session waits for it (else the click put back the state it took out)."""
        with self._lock_of(session_id), self.lock:
            return self.sessions.pop(session_id, None) is not None

    def _lock_of(self, session_id):
        return self.session_locks[hash(session_id) % len(self.session_locks)]

    @property
    def n_sessions(self):
        return len(self.sessions)

    # ---------------------------------------------------------------- ranking

    def _check_k(self, k):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.n_items:
            raise ValueError(f'k must be an integer in 1..{self.n_items} (the number of items), got {k!r}')

    def _known(self, items):
        """(indices of the known ids, the unknown ids as strings)."""
        known, unknown = [], []
        for item in items:
            index = self.index.get(str(item))
            (unknown if index is None else known).append(str(item) if index is None else index)
        return known, unknown

    @torch.inference_mode()
    def _ranked(self, sessions, k, every_click=False, excluded=None, exclude_seen=False):
        """The ranking of each session (lists of known item indices) after its last click, or, with
        every_click, after each of its clicks: per session a list of [(item id, score), ...] lists, one per
        prefix length 1..L (every_click) or one for L. A session with no click gets the popular items.

        Sessions are sorted by length, longest first, so the sessions still running at click t are the first
        rows: one hidden_step per position t for all of them, as the evaluation advances its slots."""
        lengths = np.array([len(s) for s in sessions], dtype=np.int64)
        order = np.argsort(-lengths, kind='stable')
        width = int(lengths.max()) if len(sessions) else 0
        padded = np.zeros((len(sessions), width), dtype=np.int64)
        for row, s in enumerate(order):
            padded[row, :lengths[s]] = sessions[s]
        running = lengths[order]
        results = [[] for _ in sessions]
        for s in np.flatnonzero(lengths == 0):
            results[s].append(self._popular(k, excluded[s] if excluded else ()))
        hidden = self.model.init_hidden(len(sessions), self.device) if width else []
        inputs = torch.from_numpy(padded).to(self.device)
        for t in range(width):
            n = int(np.count_nonzero(running > t))
            for h, new in zip(hidden, self.model.hidden_step(inputs[:n, t], [h[:n] for h in hidden])):
                h[:n] = new
            rows = np.arange(n) if every_click else np.flatnonzero(running == t + 1)
            if len(rows) == 0:
                continue
            exclusions = [list(excluded[order[r]]) if excluded else [] for r in rows]
            if exclude_seen:
                exclusions = [e + padded[r, :t + 1].tolist() for e, r in zip(exclusions, rows)]
            ranked = self._top(hidden[-1][torch.from_numpy(rows).to(self.device)], k, exclusions)
            for r, pairs in zip(rows, ranked):
                results[order[r]].append(pairs)
        return results

    def _top(self, states, k, exclusions):
        """[(item id, score), ...] of the k best items for each row of `states` (score_all of the model),
        excluded item indices left out; equal scores by lower item index (best_k)."""
        out = []
        rows = max(1, SCORE_BLOCK // max(self.n_items, 1))
        for lo in range(0, len(states), rows):
            scores = self.model.score_all(states[lo:lo + rows])
            scores = scores if scores.dtype == torch.float64 else scores.float()   # the kNN family's stay float64
            block = exclusions[lo:lo + rows]
            pairs = [(r, i) for r, items in enumerate(block) for i in items]
            if pairs:
                r, i = torch.tensor(pairs, device=scores.device).T
                scores = scores.clone().index_put_((r, i), torch.tensor(float('-inf'), dtype=scores.dtype, device=scores.device))
            values, indices = best_k(scores, k)
            values, indices = values.cpu().tolist(), indices.cpu().tolist()
            for row, (vs, ix) in enumerate(zip(values, indices)):
                drop = set(block[row])
                out.append([(self.ids[i], v) for v, i in zip(vs, ix) if i not in drop])
        return out

    def _popular(self, k, excluded=()):
        """The k most clicked training items (score: their clicks), excluded ones left out; [] without the
        training support (older checkpoints)."""
        if self.popular_order is None:
            return []
        drop = set(excluded)
        chosen = [i for i in self.popular_order[:k + len(drop)] if i not in drop][:k]
        return [(self.ids[i], float(self.support[i])) for i in chosen]


def best_k(scores, k):
    """The k largest scores of each row, largest first, and their columns; equal scores by lower column,
    also at the cut: the result of baselines.top_k, which makes several passes over the whole matrix.
    Here torch.topk, then one pass to check that no score tied with the k-th was left out; only rows where
    one was (rare with real-valued scores) go through top_k."""
    values, indices = torch.topk(scores, k, dim=1)
    complete = (scores >= values[:, -1:]).sum(1) == k
    indices, order = indices.sort(dim=1)                      # equal values: lower column first
    values, order = values.gather(1, order).sort(dim=1, descending=True, stable=True)
    indices = indices.gather(1, order)
    if not bool(complete.all()):
        rows = (~complete).nonzero().squeeze(1)
        values[rows], indices[rows] = top_k(scores[rows], k)
    return values, indices


def standard_ranks(scores):
    """The evaluation's standard rank of each entry of a best-first score list: 1 + the number of items
    scored higher (all of which are earlier in the list); equal scores share a rank."""
    ranks = []
    for position, score in enumerate(scores):
        ranks.append(ranks[-1] if position and score == scores[position - 1] else position + 1)
    return ranks


# ---------------------------------------------------------------- batch command

def recommend_file(recommender, input_path, output_path, k, every_click=False, exclude_seen=False,
                   chunk=CHUNK_SESSIONS, progress=True):
    """Top-k for every session of a split file (TAB, SessionId ItemId Time) after its last click or, with
    every_click, after each click; written to output_path (TAB: SessionId Position ItemId Rank Score,
    Position = the session's clicks read so far) under a temporary name, renamed when complete.
    Sessions are ordered by SessionId, clicks by Time (ties keep the file's order), as in dataset.py.
    The input's columns are held in memory (about 24 bytes a click); the recommendations are computed and
    written a chunk of sessions at a time. Returns a dict of counts."""
    from tqdm import tqdm
    session_ids, items, times = read_split(input_path)
    index = recommender.item_map.index(items)
    order = np.lexsort((times, session_ids))
    session_ids, index = session_ids[order], index[order]
    starts = np.flatnonzero(np.r_[True, session_ids[1:] != session_ids[:-1]])
    bounds = np.r_[starts, len(session_ids)]
    counts = dict(sessions=len(starts), clicks=len(index), unknown_clicks=int((index < 0).sum()),
                  popular_rows=0, rows=0)

    popular = recommender._popular(k)

    def write(tmp):
        with open(tmp[output_path], 'w') as f, tqdm(total=len(starts), unit='session', disable=None if progress
                                                     else True, desc='recommend') as bar:
            f.write('SessionId\tPosition\tItemId\tRank\tScore\n')
            for lo in range(0, len(starts), chunk):
                group = range(lo, min(lo + chunk, len(starts)))
                clicks = [index[bounds[s]:bounds[s + 1]] for s in group]
                known = [c[c >= 0].tolist() for c in clicks]
                ranked = recommender._ranked(known, k, every_click, exclude_seen=exclude_seen)
                lines = []
                for s, c, per_prefix in zip(group, clicks, ranked):
                    n_known = np.cumsum(c >= 0)              # known clicks among the first p clicks
                    positions = range(1, len(c) + 1) if every_click else [len(c)]
                    for p in positions:
                        j = int(n_known[p - 1])
                        pairs = per_prefix[j - 1] if j and every_click else per_prefix[-1] if j else popular
                        counts['popular_rows'] += j == 0
                        ranks = standard_ranks([v for _, v in pairs])
                        lines += [f'{session_ids[bounds[s]]}\t{p}\t{item}\t{rank}\t{score:.7g}\n'
                                  for (item, score), rank in zip(pairs, ranks)]
                        counts['rows'] += len(pairs)
                f.write(''.join(lines))
                bar.update(len(group))

    write_atomically([output_path], write)
    return counts


# ---------------------------------------------------------------- HTTP service

class BadRequest(Exception):
    def __init__(self, status, message, allow=None):
        super().__init__(message)
        self.status, self.allow = status, allow


def _field(body, name, kinds, what, default=None):
    value = body.get(name, default)
    if value is None or isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        shown = json.dumps(value)[:60] if not isinstance(value, (list, dict)) else type(value).__name__
        raise BadRequest(400, f'"{name}" must be {what}, got {shown}')
    return value


ID = (str, int)
ID_WHAT = 'a string or an integer'
ENDPOINTS = {'/recommend': 'POST', '/click': 'POST', '/end': 'POST', '/health': 'GET'}


def _session_id(body, max_id_bytes):
    """The request's session id as the cache's key (a string), at most max_id_bytes in UTF-8: the cache holds
    max_sessions keys, so the key's length bounds its memory."""
    session_id = str(_field(body, 'session_id', ID, ID_WHAT))
    size = len(session_id.encode('utf-8', 'surrogatepass'))
    if size > max_id_bytes:
        raise BadRequest(400, f'"session_id" must be at most {max_id_bytes} bytes (UTF-8), got {size:,}')
    return session_id


def handle(recommender, method, path, body, default_k=20, max_id_bytes=SERVICE_LIMITS['max_id_bytes']):
    """Answer one request: (status, JSON-able dict). `path` without its query string; `body` the parsed JSON
    of a POST; `default_k` the k of a request that gives none."""
    if path not in ENDPOINTS:
        raise BadRequest(404, f'no such endpoint {path[:60]!r} (POST /recommend, /click, /end; GET /health)')
    if method != ENDPOINTS[path]:
        allowed = ENDPOINTS[path]
        raise BadRequest(405, f'{path} takes {allowed}{" with a JSON body" if allowed == "POST" else ""}', allowed)
    if path == '/health':
        return 200, {'model': recommender.model_name, 'items': recommender.n_items, 'device': str(recommender.device),
                     'sessions': recommender.n_sessions, 'max_sessions': recommender.max_sessions, 'k': default_k}
    fields = {'/recommend': ('items', 'k', 'exclude_seen'), '/click': ('session_id', 'item_id', 'k'),
              '/end': ('session_id',)}
    if not isinstance(body, dict):
        raise BadRequest(400, 'the body must be a JSON object')
    extra = sorted(set(body) - set(fields[path]))
    if extra:
        raise BadRequest(400, f'unknown field(s) {", ".join(map(repr, extra))[:80]} for {path} '
                              f'(expected {", ".join(fields[path])})')
    k = _field(body, 'k', (int,), f'an integer in 1..{recommender.n_items}', default_k) if path != '/end' else None
    if k is not None and not 1 <= k <= recommender.n_items:
        raise BadRequest(400, f'"k" must be an integer in 1..{recommender.n_items}, got {k}')
    if path == '/recommend':
        items = _field(body, 'items', (list,), f'a list of item ids ({ID_WHAT} each)')
        if not all(isinstance(i, ID) and not isinstance(i, bool) for i in items):
            raise BadRequest(400, f'"items" must be a list of item ids ({ID_WHAT} each)')
        exclude_seen = _field(body, 'exclude_seen', (bool,), 'true or false', False)
        result = recommender.recommend(items, k, exclude=items if exclude_seen else None)
    elif path == '/click':
        session_id = _session_id(body, max_id_bytes)
        result = recommender.click(session_id, _field(body, 'item_id', ID, ID_WHAT), k)
    else:
        return 200, {'ended': recommender.end(_session_id(body, max_id_bytes))}
    return 200, {'items': [i for i, _ in result], 'scores': [s for _, s in result], 'unknown': result.unknown,
                 'popular': result.popular}


def http_answer(status, answer, connection=None, allow=None, head_only=False):
    """The bytes of one answer: status line, headers and the JSON body, to be sent in one write. `connection`:
    the Connection header (close, keep-alive for an HTTP/1.0 client that asked, or none)."""
    data = json.dumps(answer).encode()
    head = [f'HTTP/1.1 {int(status)} {http.server.BaseHTTPRequestHandler.responses.get(status, ("",))[0]}',
            'Server: gru4rec-recommend', f'Date: {email.utils.formatdate(usegmt=True)}',
            'Content-Type: application/json', f'Content-Length: {len(data)}']
    head += [f'Allow: {allow}'] * bool(allow) + ['Retry-After: 1'] * (status == 503)
    head += [f'Connection: {connection}'] * bool(connection)
    return ('\r\n'.join(head) + '\r\n\r\n').encode() + (b'' if head_only else data)


def linger(sock, seconds=1.0):
    """Close after an answer sent before the request was read whole: stop sending, then read and drop what
    the client still sends (at most `seconds`), so that closing with unread bytes (a TCP reset) does not
    destroy the answer before the client read it."""
    try:
        sock.shutdown(socket.SHUT_WR)
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                break
    except OSError:
        pass


class DeadlineReader(io.RawIOBase):
    """A connection's bytes for the handler's rfile, each recv given only the time left before `deadline`
    (time.monotonic()): a request must arrive whole in time however slowly it trickles in (a socket timeout
    alone is per recv: one byte every 20 s held a connection for as long as the client liked)."""

    def __init__(self, sock):
        self.sock, self.deadline, self.received, self.expired, self.poll = sock, float('inf'), 0, False, False

    def readable(self):
        return True

    def readinto(self, buffer):
        if self.poll:                                   # what has come already, without waiting (None: nothing)
            self.sock.settimeout(0.0)
            try:
                n = self.sock.recv_into(buffer)
            except BlockingIOError:
                return None
            self.received += n
            return n
        left = self.deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError('the request deadline passed')
            self.sock.settimeout(left)
            n = self.sock.recv_into(buffer)
        except TimeoutError:
            self.expired = True
            raise
        self.received += n
        return n


class Handler(http.server.BaseHTTPRequestHandler):
    """One connection, in a worker thread: requests one after another (HTTP/1.1 keeps the connection open),
    each answered by `handle` in JSON, errors of the standard library's parsing included. make_server sets
    the class attributes `recommender`, `default_k`, `request_timeout`, `max_body_bytes`, `max_id_bytes`."""
    protocol_version = 'HTTP/1.1'
    disable_nagle_algorithm = True
    recommender = default_k = request_timeout = max_body_bytes = max_id_bytes = None

    def setup(self):
        super().setup()
        self.rfile.close()
        self.reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)
        self.answered = self.unread = False

    def handle(self):
        """The connection's requests, each to be read whole within request_timeout of the connection's start or
        of the previous answer (so an idle connection is closed after it, and sooner when others wait)."""
        self.close_connection = False
        while not self.close_connection:
            self.reader.deadline, self.reader.received = time.monotonic() + self.request_timeout, 0
            if self.answered and not self.next_request_comes():
                break
            self.handle_one_request()

    def next_request_comes(self):
        """Wait for a kept-alive connection's next request: False at the deadline, or at once when connections
        wait for a worker and this one sent nothing yet."""
        self.reader.poll = True
        try:
            if self.rfile.peek(1):                      # buffered, or already in the socket
                return True
        finally:
            self.reader.poll = False
        while (left := self.reader.deadline - time.monotonic()) > 0:
            self.connection.settimeout(min(left, 0.1))
            try:
                self.connection.recv(1, socket.MSG_PEEK)        # returns once a byte (or the end) is there
                return True
            except TimeoutError:
                if self.server.waiting.qsize():
                    return False
        return False

    def handle_one_request(self):
        """One request; 408 if part of it came before the deadline and the rest did not."""
        self.answered, self.command = False, None
        super().handle_one_request()
        if self.reader.expired and not self.answered:
            self.close_connection = True
            if self.reader.received:
                self.unread = True
                self.reply(408, {'error': f'the request did not arrive whole within {self.request_timeout:g} s '
                                          f'(--request_timeout)'})

    def __getattr__(self, name):
        if name.startswith('do_'):          # every method: JSON 405 (or 404) from handle(), not the stdlib's 501
            return lambda: self.answer(self.command)
        raise AttributeError(name)

    def answer(self, method):
        try:
            body = self.read_body() if method == 'POST' else self.skip_body()
            status, reply = handle(self.recommender, method, self.path.split('?', 1)[0], body, self.default_k,
                                   self.max_id_bytes)
        except BadRequest as err:
            self.reply(err.status, {'error': str(err)}, allow=err.allow)
        except OSError:                     # the client went away, or the deadline passed mid-body (408 above)
            raise
        except Exception as err:            # a bug must not take the server down; say so, keep serving
            self.reply(500, {'error': f'internal error: {type(err).__name__}: {str(err)[:200]}'})
        else:
            self.reply(status, reply)

    def reply(self, status, answer, allow=None):
        if self.server.waiting.qsize():     # others wait for a worker: this connection makes room for them
            self.close_connection = True
        connection = 'close' if self.close_connection else 'keep-alive' if self.request_version == 'HTTP/1.0' else None
        self.connection.settimeout(self.request_timeout)
        self.wfile.write(http_answer(status, answer, connection, allow, head_only=self.command == 'HEAD'))
        self.answered = True

    def send_error(self, code, message=None, explain=None):
        """The standard library's own refusals (a malformed request line, a line too long, too many headers)."""
        self.close_connection = True
        self.reply(code, {'error': message or self.responses.get(code, ('error',))[0]})

    def skip_body(self):
        """A request other than POST: a body it came with is not read, so the connection ends after the answer."""
        if self.headers.get('Transfer-Encoding') or self.headers.get('Content-Length', '0').strip() != '0':
            self.close_connection = self.unread = True

    def read_body(self):
        if self.headers.get('Transfer-Encoding'):
            self.close_connection = self.unread = True
            raise BadRequest(400, 'send the body with a Content-Length (no Transfer-Encoding)')
        try:
            length = int(self.headers.get('Content-Length'))
            if length < 0:
                raise ValueError
        except (TypeError, ValueError):
            self.close_connection = self.unread = True
            raise BadRequest(400, 'a POST needs a Content-Length header (a number of bytes)') from None
        if length > self.max_body_bytes:
            self.close_connection = self.unread = True
            raise BadRequest(413, f'request body of {length} bytes; at most {self.max_body_bytes} (--max_body_bytes)')
        raw = self.rfile.read(length)
        if len(raw) < length:
            raise ConnectionAbortedError('the client closed the connection before its body ended')
        try:
            return json.loads(raw)
        except RecursionError:
            raise BadRequest(400, 'the JSON is nested too deeply') from None
        except (ValueError, UnicodeDecodeError) as err:
            raise BadRequest(400, f'malformed JSON: {str(err).splitlines()[0][:100]}') from None

    def finish(self):
        super().finish()
        if self.unread and self.answered:
            linger(self.connection)

    def log_message(self, *args):          # quiet: one line per request would swamp the terminal
        pass


class Server(http.server.HTTPServer):
    """`workers` threads answer the connections, which wait for one in a queue of at most `queue`; a connection
    beyond workers + queue gets 503 at once from the accepting thread. No thread per connection (as
    ThreadingHTTPServer starts), so a crowd of slow clients holds at most the workers, each for at most
    --request_timeout a request. The listen backlog (connections the kernel holds until they are accepted;
    the standard library's 5 reset or delayed a burst of 200 by seconds) is the queue's length, at least 128."""

    def __init__(self, address, handler, workers, queue):
        self.address_family = socket.getaddrinfo(*address, type=socket.SOCK_STREAM)[0][0] if address[0] else \
            socket.AF_INET
        self.request_queue_size = max(queue, 128)
        self.slots = threading.BoundedSemaphore(workers + queue)     # connections accepted, not yet finished
        self.waiting = SimpleQueue()
        self.lingering = collections.deque()                        # (until, socket) of turned-away connections
        self.busy = http_answer(503, {'error': f'the server is busy ({workers} workers answering, {queue} '
                                               f'connections waiting: --workers, --queue); try again'}, 'close')
        super().__init__(address, handler)
        self.workers = [threading.Thread(target=self.work, daemon=True) for _ in range(workers)]
        for worker in self.workers:
            worker.start()

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)          # not HTTPServer's, which looks up the host's name
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, sock, address):           # the accepting thread (serve_forever)
        if self.slots.acquire(blocking=False):
            self.waiting.put((sock, address))
            return
        try:                                            # 503 into the socket's empty send buffer, no waiting
            sock.setblocking(False)
            sock.send(self.busy)
            sock.shutdown(socket.SHUT_WR)
            self.lingering.append((time.monotonic() + 1.0, sock))
        except OSError:
            sock.close()

    def service_actions(self):
        """Between accepts: read and drop what turned-away clients still send (see linger), close each at its
        end of file or a second after its answer."""
        now, kept = time.monotonic(), collections.deque()
        while self.lingering:
            until, sock = self.lingering.popleft()
            try:
                done = any(not sock.recv(65536) for _ in range(4)) or now > until
            except BlockingIOError:
                done = now > until
            except OSError:
                done = True
            if done or len(kept) >= 512:          # at most 512 file descriptors kept for them
                sock.close()
            else:
                kept.append((until, sock))
        self.lingering = kept

    def work(self):
        while True:
            sock, address = self.waiting.get()
            if sock is None:
                return
            try:
                self.finish_request(sock, address)
            except OSError:                  # the client reset, closed or stalled: nothing for the log
                pass
            except Exception:
                self.handle_error(sock, address)
            finally:
                self.shutdown_request(sock)
                self.slots.release()

    def handle_error(self, request, client_address):
        """One line, not socketserver's traceback."""
        err = sys.exc_info()[1]
        print(f'error answering {client_address[0]}: {type(err).__name__}: {str(err)[:200]}', file=sys.stderr,
              flush=True)

    def server_close(self):
        super().server_close()
        for _ in self.workers:
            self.waiting.put((None, None))
        while self.lingering:
            self.lingering.popleft()[1].close()


def make_server(recommender, host='127.0.0.1', port=8000, default_k=None, **limits):
    """The service's server (not yet serving: serve_forever), on an IPv4 or IPv6 address. `limits`: the keys
    of SERVICE_LIMITS; `default_k`: the k of requests without one (default 20, at most the items)."""
    limits = dict(SERVICE_LIMITS, **limits)
    handler = type('Handler', (Handler,), dict(
        recommender=recommender, default_k=default_k or min(20, recommender.n_items),
        request_timeout=limits['request_timeout'], max_body_bytes=limits['max_body_bytes'],
        max_id_bytes=limits['max_id_bytes']))
    return Server((host, port), handler, limits['workers'], limits['queue'])


def serve(recommender, host, port, default_k=None, **limits):
    """Serve until SIGINT or SIGTERM, then stop cleanly (exit status 0)."""
    try:
        server = make_server(recommender, host, port, default_k, **limits)
    except OSError as err:
        raise InputError(f'--host {host} --port {port}: cannot listen ({err.strerror or err})') from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    limits = dict(SERVICE_LIMITS, **limits)
    print(f'serving {recommender.model_name} ({recommender.n_items:,} items, {recommender.device}) on '
          f'http://{f"[{host}]" if ":" in host else host}:{port} (POST /recommend /click /end, GET /health; '
          f'k {server.RequestHandlerClass.default_k} where a request gives none; limits: --workers '
          f'{limits["workers"]}, --queue {limits["queue"]}, --request_timeout {limits["request_timeout"]:g} s, '
          f'--max_body_bytes {limits["max_body_bytes"]:,}, --max_id_bytes {limits["max_id_bytes"]}, '
          f'--max_sessions {recommender.max_sessions:,}; Ctrl-C stops)', flush=True)
    while not stop.wait(0.5):
        pass
    server.shutdown()
    server.server_close()
    print('stopped', flush=True)


# ---------------------------------------------------------------- command line

def parse_args(argv=None):
    p = ArgumentParser(description='Top-k next-item recommendations from a checkpoint: for the sessions of a '
                       'file (--input, --output) or as an HTTP service (--serve).')
    p.add_argument('--load_model', required=True, help='a checkpoint of main.py (checkpoint/<run>/model_XXXXX.pt)')
    p.add_argument('--input', help='split file (TAB: SessionId ItemId Time) whose sessions get recommendations')
    p.add_argument('--output', help='TAB file: SessionId Position ItemId Rank Score')
    p.add_argument('--k', type=int, help='recommendations per session (or per click; with --serve, for requests '
                   'that give no k); default 20, or all the items of a model with fewer')
    p.add_argument('--every_click', action='store_true', help='the top-k after every click, not only the last')
    p.add_argument('--exclude_seen', action='store_true', help='leave out the items the session clicked so far')
    p.add_argument('--device', default='auto', help='auto (cuda when available), cpu, cuda, cuda:1, ...')
    p.add_argument('--train_data', help='older checkpoints only: their training file, for the popular fallback')
    p.add_argument('--serve', action='store_true', help='answer HTTP requests instead of reading --input')
    p.add_argument('--host', default='127.0.0.1', help='--serve: the address to listen on')
    p.add_argument('--port', type=int, default=8000, help='--serve: the port (0: any free port)')
    p.add_argument('--max_sessions', type=int, default=10_000,
                   help='--serve: live sessions kept (LRU; default %(default)s)')
    limit = SERVICE_LIMITS
    p.add_argument('--workers', type=int, default=limit['workers'],
                   help='--serve: threads answering requests (default %(default)s)')
    p.add_argument('--queue', type=int, default=limit['queue'], help='--serve: connections that wait for a worker '
                   '(and the listen backlog); beyond them a connection gets 503 at once (default %(default)s)')
    p.add_argument('--request_timeout', type=float, default=limit['request_timeout'], help='--serve: seconds a '
                   'client has to send a whole request (line, headers, body; on a kept-alive connection counted '
                   'from the previous answer), else 408 and the connection closed (default %(default)s)')
    p.add_argument('--max_body_bytes', type=int, default=limit['max_body_bytes'], help='--serve: the largest '
                   'request body (413 beyond; default %(default)s)')
    p.add_argument('--max_id_bytes', type=int, default=limit['max_id_bytes'], help='--serve: the longest '
                   'session id in UTF-8 bytes (400 beyond; the cache keeps --max_sessions ids; default '
                   '%(default)s)')
    p.add_argument('--threads', type=int, help='torch threads per computation (default: 1 with --serve, where '
                   'requests run in parallel threads; torch\'s default, all cores, for the batch command)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.serve == bool(args.input or args.output):
        raise InputError('give either --input FILE --output FILE (batch) or --serve (HTTP service)')
    if not args.serve and not (args.input and args.output):
        raise InputError('the batch command needs both --input FILE and --output FILE')
    if args.max_sessions < 1:
        raise InputError(f'--max_sessions must be >= 1, got {args.max_sessions}')
    if not 0 <= args.port <= 65535:
        raise InputError(f'--port must be in 0..65535, got {args.port}')
    if args.threads is not None and args.threads < 1:
        raise InputError(f'--threads must be >= 1, got {args.threads}')
    for flag in ('workers', 'queue', 'max_body_bytes', 'max_id_bytes'):
        if getattr(args, flag) < 1:
            raise InputError(f'--{flag} must be >= 1, got {getattr(args, flag)}')
    if not 0 < args.request_timeout < float('inf'):
        raise InputError(f'--request_timeout must be a positive number of seconds, got {args.request_timeout}')
    device = pick_device(args.device)
    recommender = SessionRecommender.load(args.load_model, device, args.max_sessions, args.train_data)
    k = min(20, recommender.n_items) if args.k is None else args.k
    if not 1 <= k <= recommender.n_items:
        raise InputError(f'--k must be in 1..{recommender.n_items} (the model\'s items), got {k}')
    if args.threads or args.serve:       # one click's small operations only lose by waiting for a second thread
        torch.set_num_threads(args.threads or 1)     # (after the checks: a refused command changes nothing)
    if recommender.popular_order is None:
        print(f'note: {args.load_model} holds no training support (saved by older code): sessions with no '
              f'known item get no recommendations (pass --train_data FILE)', file=sys.stderr)
    if args.serve:
        return serve(recommender, args.host, args.port, k, workers=args.workers, queue=args.queue,
                     request_timeout=args.request_timeout, max_body_bytes=args.max_body_bytes,
                     max_id_bytes=args.max_id_bytes)
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        raise InputError(f'--output {args.output}: the same file as --input')
    start = time.perf_counter()
    counts = recommend_file(recommender, args.input, args.output, k, args.every_click, args.exclude_seen)
    seconds = time.perf_counter() - start
    print(f'{args.output}: {counts["rows"]:,} rows for {counts["sessions"]:,} sessions ({counts["clicks"]:,} '
          f'clicks, {counts["unknown_clicks"]:,} on unknown items skipped; {counts["popular_rows"]:,} '
          f'recommendation lists from the popular items) in {seconds:.1f} s, '
          f'{counts["sessions"] / max(seconds, 1e-9):,.0f} sessions/s')
    return counts


if __name__ == '__main__':
    run_cli(main)
