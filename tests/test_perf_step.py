"""scripts/perf_step.py: its grouping of perf's samples, and the sampled child's protocol (the figures
themselves live in benchmarks/RESULTS.md)."""
import os
import subprocess
import sys
import time

import pytest

from devices import has_compiler
from scripts import perf_step

REPORT = """# Samples: 30K of event 'cpu-clock:uppp'
#
    56.00%  libtorch_cpu.so        [.] mkl_blas_def_sgemm_kernel_0_zen
     5.00%  libtorch_cpu.so        [.] mkl_blas_def_sgemm_scopy_right16_bdz
     2.50%  libtorch_cpu.so        [.] mkl_blas_def_sgemm_mscale
     8.00%  libgomp.so.1           [.] 0x000000000001de62
     4.00%  row_update_24653f26facaed46bb90.so  [.] row_update._omp_fn.0
     3.00%  cbjr2pw.main.so        [.] cpp_fused__foreach_add__foreach_sqrt_copy__10._omp_fn.0
     1.00%  cbjr2pw.main.so        [.] cpp_fused__foreach_add__foreach_sqrt_cat_sigmoid_backward_8._omp_fn.0
     2.00%  cbjr2pw.main.so        [.] cpp_fused_add_mul_sigmoid_slice_sub_tanh_4._omp_fn.0
     6.00%  libtorch_cpu.so        [.] at::CPUGeneratorImpl::random
     0.50%  libm.so.6              [.] __expm1f
     7.00%  libpython3.11.so.1.0   [.] _PyEval_EvalFrameDefault
     1.00%  libtorch_python.so     [.] torch::dynamo::TensorCheck::check
     0.25%  _mt19937.cpython-311-x86_64-linux-gnu.so  [.] mt19937_double
     2.00%  [kernel.kallsyms]      [k] clear_page_erms
     1.00%  libc.so.6              [.] _int_malloc
     0.75%  libstdc++.so.6         [.] operator new
"""


def test_samples_are_grouped_by_where_they_fall():
    shares = perf_step.group_shares(REPORT)
    assert list(shares) == list(perf_step.GROUPS)
    assert shares == {'MKL sgemm': 56.0, 'MKL pack / scale': 7.5, 'threads waiting': 8.0, 'row_kernel': 4.0,
                      'dense update': 3.0, 'other kernels': 3.0, 'ATen other': 6.5, 'Python': 8.25,
                      'libc / kernel': 3.0, 'other': 0.75}
    assert sum(shares.values()) == pytest.approx(100.0)


@pytest.mark.skipif(not has_compiler(), reason='no C++ compiler for torch.compile')
def test_the_child_steps_until_its_stdin_closes():
    """The sampled child says 'ready' after compiling and warming up, then steps and reports ms a step each
    second, and stops when the parent closes its stdin (so that it outlasts the perf window)."""
    command = [sys.executable, perf_step.__file__, '--child', 'rsc15_xe_shared_100', '--items', '500']
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, cwd=perf_step.ROOT, env={**os.environ, 'OMP_NUM_THREADS': '2'})
    try:
        line = child.stdout.readline()
        while line and line.strip() != 'ready':      # (the compilation's line first)
            line = child.stdout.readline()
        assert line, 'the child ended before it was ready'
        time.sleep(1.5)                             # (nothing more is buffered: its next line comes after 1 s)
        rest, _ = child.communicate(input='', timeout=60)       # closes its stdin
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0
    assert rest.split() and all(float(ms) > 0 for ms in rest.split())
