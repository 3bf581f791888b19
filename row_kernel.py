"""AdagradM's row rule (spec B9) on the CPU as one C++ loop that reads and writes each row of an item table
once: the row updates of the compiled static step (issue #31), applied after its compiled graph.

Why by hand: Inductor writes the update of W_y, its accumulator and its velocity as four passes over the
step's rows with buffers between them, and cannot do better: it never fuses a read and a write of one tensor
through a computed index (its scheduler's rule), which a single pass needs. This loop does it in one pass,
each row by one thread (OpenMP over the rows, torch's thread count), with the next rows prefetched: the same
arithmetic as Inductor's kernel, bit for bit (tests/test_row_kernel.py), in a fraction of the time
(RSC15 setting, 37,500 items, 2 threads: about 0.2 against 0.5-0.7 ms; the whole step 1.82 against 2.07 ms,
and 5-26% faster at the other paramfiles: bench_static_step.py's `inductor_rows` rows, benchmarks/RESULTS.md).
Everything else of the step stays in the compiled graph, and the GPU's step keeps Inductor's update (a GPU
replays the step as a CUDA graph).

The rows come as the static step's segments (static_step.segments): segment k holds row `rows[k]` and the
segments past the last distinct row repeat it (`source[k] != k`); those are skipped, so every row is
written by one iteration only and the loop is free of races whatever the order of the threads. `touched`:
the segments that take the update (the others keep their values: b_y of input-only items).

The shared mode's W_y gradient comes in three parts (`parts`): the score product's rows for the first C
segments, the M input rows' gradients and their segments. The kernel sums each segment's input rows from
zero in their order, then adds the product's row, in the order the step's eager form sums them (zeros,
scatter_add_, += the product), so the compiled graph need not build the K-row gradient: it did that with a
zeroed K x L buffer, a scatter into it, an addmm that copied its first C rows into the product's output and a
kernel that copied both into one more K x L tensor (four passes over 2-5 MB a step at 480-512 units).
In-process A/B of the compiled step, one process, 20 alternating rounds, median ratio, 18,752 items, 2
threads (2026-12-08): yoochoose 1.027, retailrocket 1.033, coveo 1.010, rees46 1.007, diginetica 1.002;
RSC15 (37,500 items, 30 rounds) 1.031, 0.981 in a run of 20 rounds: the host drifts by 2-3%.

The source is compiled once a machine (C++ compiler of torch.compile's CPU backend, -O3 -march=native) into
Inductor's cache folder, keyed by the source and the flags, and loaded with ctypes. Where it does not
compile (no OpenMP, no compiler), `kernel` returns None, prints one warning line, and the compiled step
keeps Inductor's update.
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

import torch

from devices import COMPILERS

SOURCE = r'''
#include <cmath>
#include <cstdint>
#include <vector>

extern "C" void row_update(float *table, float *acc, float *velocity, const int64_t *rows, const int64_t *source,
                           const float *grad, int64_t split, const float *inputs, const int64_t *in_segment,
                           int64_t M, const bool *touched, int64_t K, int64_t L, float lr, float mu, float eps,
                           int threads) {
    // the input rows of each segment, in increasing order: first[k], then next[m] (-1 ends a list)
    std::vector<int64_t> first(M ? K : 0, -1), next(M, -1);
    for (int64_t m = M - 1; m >= 0; m--) {
        next[m] = first[in_segment[m]];
        first[in_segment[m]] = m;
    }
    const int64_t ahead = 6;            // rows prefetched ahead: their reads miss the caches
    #pragma omp parallel num_threads(threads)
    {
        std::vector<float> sum(M ? L : 0);
        #pragma omp for schedule(static)
        for (int64_t k = 0; k < K; k++) {
            if (source[k] != k || (touched && !touched[k])) continue;
            if (k + ahead < K) {
                int64_t next_row = rows[k + ahead] * L;
                for (int64_t j = 0; j < L; j += 16) {
                    __builtin_prefetch(table + next_row + j, 1);
                    __builtin_prefetch(acc + next_row + j, 1);
                    if (mu > 0) __builtin_prefetch(velocity + next_row + j, 1);
                }
            }
            const float *g = k < split ? grad + k * L : nullptr;     // (split = K where M = 0)
            if (M) {        // the input rows' sum (from zero, in their order), then the segment's own row added
                float *t = sum.data();
                for (int64_t j = 0; j < L; j++) t[j] = 0.0f;
                for (int64_t m = first[k]; m >= 0; m = next[m]) {
                    const float *x = inputs + m * L;
                    for (int64_t j = 0; j < L; j++) t[j] += x[j];
                }
                if (g) for (int64_t j = 0; j < L; j++) t[j] += g[j];
                g = t;
            }
            float *w = table + rows[k] * L, *a = acc + rows[k] * L, *v = velocity + rows[k] * L;
            for (int64_t j = 0; j < L; j++) {
                float G = a[j] + g[j] * g[j];
                a[j] = G;
                if (mu > 0) {
                    float step = std::fma(g[j] / std::sqrt(G + eps), -lr, v[j] * mu);
                    v[j] = step;
                    w[j] += step;
                } else {
                    w[j] += g[j] * -lr / std::sqrt(G + eps);
                }
            }
        }
    }
}
'''

# -ffp-contract=off: a product and a sum are rounded apart, as in Inductor's kernel (its fma is written out)
FLAGS = [['-O3', '-march=native', '-fno-math-errno', '-ffp-contract=off', '-fopenmp', '-shared', '-fPIC'],
         ['-O3', '-fno-math-errno', '-ffp-contract=off', '-shared', '-fPIC']]       # no OpenMP: one thread

_kernel = None
_failed = False


def compiler():
    """The path of the first C++ compiler found (devices.COMPILERS), or None."""
    return next((shutil.which(c) for c in COMPILERS if shutil.which(c)), None)


def cache_folder():
    """Inductor's cache folder (TORCHINDUCTOR_CACHE_DIR, else a folder of the temporary directory)/gru4rec."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
        folder = cache_dir()
    except ImportError:                 # an older torch
        folder = os.environ.get('TORCHINDUCTOR_CACHE_DIR') or os.path.join(tempfile.gettempdir(), 'torchinductor')
    return os.path.join(folder, 'gru4rec')


def build(cxx, flags, folder):
    """The shared library of SOURCE built with `cxx` and `flags` in `folder` (reused when there): its path.
    Built under a temporary name and renamed, so a half-written library never poses as one."""
    key = hashlib.sha256('\0'.join([SOURCE, cxx, *flags]).encode()).hexdigest()[:20]
    path = os.path.join(folder, f'row_update_{key}.so')
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            source, library = os.path.join(scratch, 'row_update.cpp'), os.path.join(scratch, 'row_update.so')
            with open(source, 'w') as f:
                f.write(SOURCE)
            subprocess.run([cxx, *flags, source, '-o', library], check=True, capture_output=True, text=True)
            os.replace(library, path)
    return path


def load(path):
    library = ctypes.CDLL(path)
    pointer = ctypes.c_void_p
    library.row_update.argtypes = ([pointer] * 6 + [ctypes.c_int64, pointer, pointer, ctypes.c_int64, pointer]
                                   + [ctypes.c_int64] * 2 + [ctypes.c_float] * 3 + [ctypes.c_int])
    library.row_update.restype = None
    return library.row_update


def kernel():
    """The loaded row update (built at the first call), or None where it does not build (one warning line)."""
    global _kernel, _failed
    if _kernel is None and not _failed:
        cxx, error = compiler(), None
        for flags in FLAGS if cxx else []:
            try:
                _kernel = load(build(cxx, flags, cache_folder()))
                break
            except (OSError, subprocess.CalledProcessError) as err:
                error = error or err
        if _kernel is None:
            _failed = True
            first = (getattr(error, 'stderr', '') or str(error or 'no C++ compiler')).strip().splitlines() or ['']
            print(f'warning: the row update kernel did not compile ({first[0][:160]}); the compiled step keeps '
                  "Inductor's row update", file=sys.stderr)
    return _kernel


def fits_table(table, state):
    """Whether the kernel can update this table: CPU float32, contiguous, its optimiser state alike."""
    tensors = (table, state['acc'], state['velocity'])
    return (all(t.device.type == 'cpu' and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)
            and table.shape == state['acc'].shape == state['velocity'].shape)


def parts(grad):
    """(grad, inputs, in_segment) of a row gradient given whole (one row per segment: inputs and in_segment None)
    or as that triple: `grad` the rows of the first len(grad) segments, to which the input rows `inputs`
    (M, ...) add up into their segments `in_segment` (M,) (the compiled step's W_y gradient: the score
    product's rows and the input rows' gradients, so that they need not be summed into a K-row tensor first)."""
    return (grad, None, None) if isinstance(grad, torch.Tensor) else tuple(grad)


def whole(grad, n_segments):
    """The row gradient as one tensor of n_segments rows (`parts` added up as the kernel adds them: the input
    rows from zero in their order, then the segment's own row; static_step.tensor_step's W_y gradient where
    the kernel does not take it)."""
    grad, inputs, in_segment = parts(grad)
    if inputs is None:
        return grad
    index = in_segment.view(-1, *([1] * (inputs.dim() - 1))).expand_as(inputs)
    out = inputs.new_zeros(n_segments, *inputs.shape[1:]).scatter_add_(0, index, inputs)
    out[:len(grad)] += grad
    return out


def fits_update(table, rows, grad):
    """Whether the kernel can take an update of a fitting table: int64 rows and float32 gradient rows of the
    table's rows' shape, contiguous, whole (one per row) or as the triple of `parts`."""
    grad, inputs, in_segment = parts(grad)
    pieces = [grad] if inputs is None else [grad, inputs]
    return (rows.dtype == torch.int64 and len(grad) <= len(rows)
            and (len(grad) == len(rows) if inputs is None else
                 in_segment.dtype == torch.int64 and in_segment.shape == inputs.shape[:1])
            and all(g.dtype == torch.float32 and g.is_contiguous() and g.shape[1:] == table.shape[1:]
                    for g in pieces))


def fits(table, state, rows, grad):
    """Whether the kernel can take this update: the table fits (fits_table) and so do the rows and gradient."""
    return fits_table(table, state) and fits_update(table, rows, grad)


def row_update(table, state, rows, source, grad, lr, mu, eps, touched=None):
    """static_step.row_update by the kernel, in place: the kernel must exist (`kernel`) and fit (`fits`).
    `grad`: one gradient row per segment, or the triple of `parts`."""
    rows, source = rows.contiguous(), source.to(torch.int64).contiguous()
    touched = None if touched is None else touched.to(torch.bool).contiguous()
    grad, inputs, in_segment = parts(grad)
    in_segment = None if in_segment is None else in_segment.contiguous()     # (held until the call returns)
    kernel()(table.data_ptr(), state['acc'].data_ptr(), state['velocity'].data_ptr(), rows.data_ptr(),
             source.data_ptr(), grad.data_ptr(), len(grad), None if inputs is None else inputs.data_ptr(),
             None if in_segment is None else in_segment.data_ptr(), 0 if inputs is None else len(inputs),
             None if touched is None else touched.data_ptr(), len(rows), table[0].numel(), lr, mu, eps,
             torch.get_num_threads())
