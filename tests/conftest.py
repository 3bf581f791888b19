import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SAMPLE = os.path.join(ROOT, '..', 'shared', 'data', 'yoochoose-clicks-sample.dat')

needs_sample = pytest.mark.skipif(not os.path.isfile(SAMPLE), reason='../shared/data sample not present')


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored after: small matrices run several times faster on one thread
    of a shared 2-core machine, and a timing compared across sizes must not depend on the core count."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_command(*args, cwd=ROOT):
    """Run one of the project's commands as a user would; returns CompletedProcess (text)."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def write_raw(path, rows):
    """rows: (session, 'YYYY-MM-DDTHH:MM:SS.mmmZ', item) -> a raw yoochoose click file."""
    with open(path, 'w') as f:
        for session, stamp, item in rows:
            f.write(f'{session},{stamp},{item},0\n')
    return str(path)


def write_split(path, rows, header='SessionId\tItemId\tTime'):
    """rows: (session, item, time) -> a TAB split file with a header."""
    with open(path, 'w') as f:
        f.write(header + '\n')
        for row in rows:
            f.write('\t'.join(str(v) for v in row) + '\n')
    return str(path)


def synthetic_split(folder, n_sessions, n_items, seed):
    """Synthetic raw clicks (10 days) preprocessed into folder; returns the raw file's path."""
    import preprocessing
    from scripts.make_synthetic import generate, write_raw as write_clicks
    raw = os.path.join(str(folder), 'yoochoose-clicks.dat')
    write_clicks(raw, generate(n_sessions, n_items, days=10, seed=seed))
    preprocessing.preprocess(raw, str(folder) + '/', log=lambda *a: None)
    return raw


def fitted(model, data):
    """A baseline (or kNN model) after its fit, which yields once per epoch."""
    for _ in model.fit(data):
        pass
    return model


def steps(model, items):
    """Scores after each click of one session, as evaluate() produces them."""
    import torch
    hidden = model.init_hidden(1)
    out = []
    for item in items:
        hidden = model.hidden_step(torch.tensor([item]), hidden)
        out.append(model.score_all(hidden[-1])[0].tolist())
    return out


class ReplayOnCPU:
    """The CUDA graph API of devices.GraphReplay on the CPU: capture records the function without its effects
    (the model, the optimiser's state if one is given and the RNG put back, as a CUDA capture runs nothing),
    replay runs it and writes its results into the captured outputs, as a graph's kernels write into their
    fixed buffers."""

    def __init__(self, model, optimizer=None):
        self.model, self.optimizer, self.captures, self.replays = model, optimizer, 0, 0

    def warmup(self):
        import contextlib
        return contextlib.nullcontext()

    def capture(self, function):
        import torch
        from torch.utils._pytree import tree_leaves
        state = [] if self.optimizer is None else [t for s in self.optimizer.state.values() for t in s.values()]
        tensors = list(self.model.parameters()) + state
        saved, rng = [t.clone() for t in tensors], torch.get_rng_state()
        out = function()
        with torch.no_grad():
            for t, value in zip(tensors, saved):
                t.copy_(value)
        torch.set_rng_state(rng)
        self.captures += 1
        outer = self

        class Graph:
            def replay(self):
                outer.replays += 1
                for buffer, value in zip(tree_leaves(out), tree_leaves(function())):
                    buffer.copy_(value)
        return Graph(), out
