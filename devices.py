"""Where a run computes: the --device flag, --deterministic, and the random state of a device.

`pick_device` accepts auto, cpu, cuda and cuda:<n> only, checks the index against the GPUs present and
runs one tiny kernel on the chosen GPU before any data is read: a GPU whose architecture the installed
torch has no kernels for (Kaggle's P100, sm_60, with current wheels) fails there, not after
preprocessing. `auto` then falls back to the CPU with one warning line; an explicit cuda is an error.

The dropout noise of a CUDA run comes from the default generator of the GPU the model lives on, so its
state is saved and restored for that GPU's index (`rng_state` / `set_rng_state`), not for the current
device.

What compiling needs and how it fails (issue #31: the compiled step, the compiled evaluation, CUDA graphs):
`has_compiler` (Inductor's CPU kernels need a C++ compiler), `fallback_warning` (the one line a failed
compilation or capture prints before the eager path takes over) and `compilation_timer` (reports the time
of a call in which torch.compile compiled something new, and stays silent when its cache served);
`GraphReplay`, a function captured as a CUDA graph and replayed (`CudaGraphs`, the API it needs of torch).

`keep_freed_memory` stops glibc from handing a step's freed buffers back to the kernel: a training step on
the CPU allocates and frees buffers of megabytes each (5 MB apiece at 512 units), which glibc serves
from fresh pages of the kernel by default, so every step paid for zero-filled page faults (rees46_xe_shared,
18,752 items, 2 threads: 3,300-4,300 faults and 5-8 ms of system time a step compiled, 27.5 -> 22.6 ms a
step with them gone; benchmarks/RESULTS.md).
"""
import contextlib
import ctypes
import os
import re
import shutil
import sys
import time
import warnings

import torch

from cli import InputError

DEVICE_NAMES = 'auto, cpu, cuda or cuda:<n>'


def probe(device):
    """None when a kernel runs on `device`, else the first line of the error it raised."""
    try:
        with warnings.catch_warnings():                        # torch's multi-line "capability not supported"
            warnings.simplefilter('ignore')                    # warning: the caller says it in one line
            (torch.zeros(2, device=device) + 1).sum().item()   # .item() waits for the kernel: errors surface here
    except Exception as err:                                   # "no kernel image is available ...", driver errors
        text = str(err).strip()
        return text.splitlines()[0][:160] if text else type(err).__name__
    return None


def pick_device(name):
    """The torch device string of --device `name` ('cpu' or 'cuda:<n>'); InputError for anything else."""
    match = re.fullmatch(r'(auto|cpu|cuda)(?::(\d+))?', name or '')
    if match is None or (match.group(2) is not None and match.group(1) != 'cuda'):
        raise InputError(f'--device {name!r}: expected {DEVICE_NAMES}')
    kind = match.group(1)
    if kind == 'cpu':
        return 'cpu'
    if not torch.cuda.is_available():
        if kind == 'auto':
            return 'cpu'
        raise InputError(f'--device {name}: no CUDA device is available (use --device cpu)')
    index = int(match.group(2) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise InputError(f'--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}')
    device = f'cuda:{index}'
    failed = probe(device)
    if failed is None:
        return device
    if kind == 'auto':
        print(f'warning: {device} ({torch.cuda.get_device_name(index)}) cannot run this torch build\'s '
              f'kernels ({failed}); training on the CPU', file=sys.stderr)
        return 'cpu'
    raise InputError(f'--device {name}: {torch.cuda.get_device_name(index)} cannot run this torch build\'s '
                     f'kernels ({failed}); use --device cpu or a torch build for this GPU')


def make_deterministic():
    """--deterministic: deterministic kernels only (torch refuses an operation that has none), and the
    cuBLAS workspace setting they need, set before CUDA initialises (cuBLAS reads it once)."""
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    torch.use_deterministic_algorithms(True)


def model_device(model):
    """The device of a model's weights (cpu for a model without any)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device('cpu')


def rng_state(device):
    """{'rng': the CPU generator's state, 'cuda_rng': that of the GPU `device` is on, or None}: CPU byte
    tensors, as checkpoints store them."""
    device = torch.device(device)
    return {'rng': torch.get_rng_state(),
            'cuda_rng': torch.cuda.get_rng_state(device=device) if device.type == 'cuda' else None}


def set_rng_state(state, device):
    """Put back what `rng_state(device)` returned (the CUDA part on `device`'s own GPU)."""
    device = torch.device(device)
    torch.set_rng_state(state['rng'])
    if device.type == 'cuda' and state.get('cuda_rng') is not None:
        torch.cuda.set_rng_state(state['cuda_rng'], device=device)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20       # blocks up to this size come from the heap (glibc's largest allowed value)
TRIM_THRESHOLD = 64 << 20       # free memory at the heap's top kept for the next step, not returned


def keep_freed_memory():
    """Keep freed memory in the process for the next step instead of returning it to the kernel (glibc's
    mallopt: fixed mmap and trim thresholds; by default glibc maps a block of megabytes afresh and trims
    the heap after a step, so the next step page-faults through zero-filled pages again). The process holds
    at most TRIM_THRESHOLD of freed memory more. Returns whether it took effect (False off glibc)."""
    if 'CS_GNU_LIBC_VERSION' not in os.confstr_names or not os.confstr('CS_GNU_LIBC_VERSION'):
        return False
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return False
    return (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)


COMPILERS = ('g++', 'c++', 'clang++')     # the C++ compilers looked for, in this order


def has_compiler():
    """Whether torch.compile's CPU backend (Inductor's C++ kernels) can find a C++ compiler."""
    return any(shutil.which(c) for c in COMPILERS)


def fallback_warning(what, err, instead):
    """Print the one warning line of a compilation or capture that failed:
    'warning: <what> (<error type>: <first line of the error>); <instead>'."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    print(f'warning: {what} ({type(err).__name__}: {first[:160]}); {instead}', file=sys.stderr)


@contextlib.contextmanager
def compilation_timer(report):
    """Call report(seconds) after the block when torch.compile compiled a new graph inside it."""
    from torch._dynamo.utils import counters
    graphs, start = counters['stats']['unique_graphs'], time.perf_counter()
    yield
    if counters['stats']['unique_graphs'] != graphs:
        report(time.perf_counter() - start)


class CudaGraphs:
    """What GraphReplay needs of CUDA graphs: a context for the warm-up calls (a side stream, as torch's CUDA
    graph notes ask) and the capture of a function (recorded, not run: nothing changes until a replay)."""

    @staticmethod
    def warmup():
        stack = contextlib.ExitStack()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        stack.enter_context(torch.cuda.stream(side))
        stack.callback(lambda: torch.cuda.current_stream().wait_stream(side))
        return stack

    @staticmethod
    def capture(function):
        """(graph with .replay(), what the function returned: tensors the replays write into)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = function()
        return graph, out


class GraphReplay:
    """A function of tensors captured as a CUDA graph and replayed, one launch a call (the training step's
    GraphStep, the evaluation's full-batch step). The first WARMUP calls of a setting run the function itself
    (compilation, cuBLAS workspaces); the next one captures it over copies of its inputs, which every later
    call fills before the replay. A setting is the objects the function reads beside its tensors (held and
    compared by identity: a freed object's id can be reused) and the tensors' shapes; a new one captures
    anew. A capture that fails prints one warning line ('<what> could not be captured as a CUDA graph';
    `instead`) and the function runs uncaptured from then on (the subclass's `failed`)."""

    WARMUP = 3
    failed = False
    what, instead = 'the step', 'running without the graph'

    def __init__(self, graphs=CudaGraphs):
        self.graphs = graphs
        self.key, self.calls, self.captured = None, 0, None

    def replay(self, objects, function, tensors):
        """function(*tensors) (tensors: a tuple of tensors or None), from the graph once it is captured: the
        graph's own output tensors, which the next replay overwrites."""
        kind = type(self)
        if kind.failed:
            return function(*tensors)
        shapes = tuple(None if t is None else tuple(t.shape) for t in tensors)
        if (self.key is None or len(objects) != len(self.key[0]) or shapes != self.key[1]
                or any(a is not b for a, b in zip(objects, self.key[0]))):
            self.key, self.calls, self.captured = (objects, shapes), 0, None
        if self.captured is None and self.calls < self.WARMUP:
            self.calls += 1
            with self.graphs.warmup():
                return function(*tensors)
        if self.captured is None:
            buffers = tuple(None if t is None else t.clone() for t in tensors)
            try:
                graph, out = self.graphs.capture(lambda: function(*buffers))
            except Exception as err:        # an operation that cannot be captured, out of memory, ...
                kind.failed = True
                fallback_warning(f'{self.what} could not be captured as a CUDA graph', err, self.instead)
                return function(*tensors)
            self.captured = (graph, buffers, out)
        graph, buffers, out = self.captured
        for buffer, t in zip(buffers, tensors):
            if t is not None:
                buffer.copy_(t)
        graph.replay()
        return out
