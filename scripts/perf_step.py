"""Where the compiled static step (static_step.py, issue #31) spends its CPU time, by Linux perf.

    python scripts/perf_step.py                                   # the six official paramfiles, 18,752 items
    python scripts/perf_step.py --presets rsc15_xe_shared_100 --items 37500 --seconds 8

torch.profiler cannot see inside the compiled step (Inductor's C++ wrapper calls its kernels directly, and its
Python wrapper's kernel events include the threads' waits: scripts/profile_train.py --step_mode compiled), so
this samples the process itself. For each paramfile a child process compiles the step (untrained model,
random inputs, popularity-skewed candidates, as bench_static_step.py), runs it for a warm-up, and keeps
stepping while `perf record` samples it for `--seconds` (the child outlasts the window, so neither the
compilation nor the exit's garbage collection is in it). The samples of both threads are grouped by where
they fall:

  MKL sgemm           the matrix products' inner kernel (mkl_blas_*sgemm_kernel*)
  MKL pack / scale    the products' packing of their operands and scaling of the output
  threads waiting     libgomp: a thread spinning at a barrier or waiting for the next parallel region,
                      i.e. the other thread runs serial code (Python, one-thread operators) or has more work
  row_kernel          the item tables' row updates after the graph (row_kernel.py)
  dense update        Inductor's fused AdagradM update of the GRU weights
  other kernels       Inductor's other fused kernels (gathers, gates, loss, dropout masks)
  ATen other          torch operators outside the products (scatter_add_, cumsum, the RNG, exp, ...)
  Python              the interpreter, Dynamo's guards, the training loop's Python
  libc / kernel       malloc, page faults, system calls

and printed as shares of all samples, with the step's time in the child during the window. Needs `perf`
(linux-tools) and leave to sample one's own processes (kernel.perf_event_paranoid <= 2); figures taken
beside another job mean nothing (the load average is printed). Findings go to benchmarks/RESULTS.md.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from cli import InputError, run_cli  # noqa: E402
from config import PRESETS  # noqa: E402

PARAMFILES = ('rsc15_xe_shared_100', 'yoochoose_xe_shared', 'rees46_xe_shared', 'coveo_bprmax_shared',
              'retailrocket_bprmax_shared', 'diginetica_bprmax_shared')
GROUPS = ('MKL sgemm', 'MKL pack / scale', 'threads waiting', 'row_kernel', 'dense update', 'other kernels',
          'ATen other', 'Python', 'libc / kernel', 'other')
SAMPLE_LINE = re.compile(r'\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)')


def group_of(dso, symbol):
    """The GROUPS entry of one `perf report --sort dso,sym` line's shared object and symbol."""
    if 'mkl_blas' in symbol:
        return 'MKL sgemm' if 'sgemm_kernel' in symbol else 'MKL pack / scale'
    if 'gomp' in dso:
        return 'threads waiting'
    if dso.startswith('row_update_'):
        return 'row_kernel'
    if 'cpp_fused_' in symbol:
        # the dense update: a kernel of foreach ops alone (fused with the backward's last gates it is "other")
        return 'dense update' if '_foreach_' in symbol and 'backward' not in symbol else 'other kernels'
    if dso.startswith(('libtorch_cpu', 'libm.', 'libm-', 'libc10')):
        return 'ATen other'
    if dso.startswith(('libpython', 'python', 'libtorch_python')) or '.cpython-' in dso:
        return 'Python'
    if dso.startswith(('libc.', 'libc-', 'ld-linux', '[kernel')):
        return 'libc / kernel'
    return 'other'


def group_shares(report):
    """{group: percent of the samples} from the text of `perf report --sort dso,sym --stdio`."""
    shares = dict.fromkeys(GROUPS, 0.0)
    for line in report.splitlines():
        match = SAMPLE_LINE.match(line)
        if match and not line.lstrip().startswith('#'):
            percent, dso, _, symbol = match.groups()
            shares[group_of(dso, symbol)] += float(percent)
    return shares


def child(preset, items, threads):
    """The sampled process: compile the step of `preset`, warm up, print 'ready', then step until stdin closes,
    printing the mean ms a step of each second."""
    import selectors
    import torch
    from checkpoints import build_model
    from config import DEFAULTS
    from devices import keep_freed_memory
    from loss import loss_function
    from optimizer import make_optimizer
    import static_step
    keep_freed_memory()                      # as training.train does on the CPU
    torch.set_num_threads(threads)
    config = {**DEFAULTS, **PRESETS[preset]}
    B, C = config['batch_size'], config['batch_size'] + config['n_sample']
    generator = torch.Generator().manual_seed(0)
    loss = loss_function(config['loss_type'], config['final_act'], B, config['bpreg'])
    popularity = torch.rand(items, generator=generator) ** 4
    batches = [(torch.randint(0, items, (B,), generator=generator),
                torch.multinomial(popularity, C, replacement=True, generator=generator)) for _ in range(64)]
    correction, no_reset = torch.zeros(C), torch.zeros(B, dtype=torch.bool)
    model = build_model(config, items, 'cpu').train()
    optimizer = make_optimizer('AdagradM', model.parameters(), config['lr'], config['momentum'])
    static_step.init_state(optimizer)
    step, hidden = static_step.CompiledStep(), model.init_hidden(B, 'cpu')
    watch = selectors.DefaultSelector()
    watch.register(sys.stdin, selectors.EVENT_READ)
    with torch.no_grad():
        for n in range(20):                     # the compilation, then a warm-up
            inputs, candidates = batches[n % len(batches)]
            _, hidden = step(model, optimizer, loss, inputs, hidden, candidates, no_reset, correction)
        print('ready', flush=True)
        n, start = 0, time.perf_counter()
        while True:
            inputs, candidates = batches[n % len(batches)]
            _, hidden = step(model, optimizer, loss, inputs, hidden, candidates, no_reset, correction)
            n += 1
            if time.perf_counter() - start > 1.0:
                print(f'{1000 * (time.perf_counter() - start) / n:.3f}', flush=True)
                if watch.select(timeout=0):       # the parent closed our stdin: stop
                    return
                n, start = 0, time.perf_counter()


def sample(preset, items, threads, seconds, perf):
    """(ms a step during the window, {group: percent}) of one paramfile: a child under `perf record`."""
    command = [sys.executable, os.path.abspath(__file__), '--child', preset, '--items', str(items),
               '--threads', str(threads)]
    with tempfile.TemporaryDirectory(prefix='perf_step_') as folder:
        data = os.path.join(folder, 'perf.data')
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            line = process.stdout.readline()
            while line and line.strip() != 'ready':          # (the compilation's own line first)
                line = process.stdout.readline()
            if not line:
                raise InputError(f'{preset}: the step did not compile or run (exit status {process.wait()})')
            recorded = subprocess.run([perf, 'record', '-q', '-F', '2999', '-p', str(process.pid), '-o', data, '--',
                                       'sleep', str(seconds)], capture_output=True, text=True)
            if recorded.returncode != 0:
                first = (recorded.stderr.strip().splitlines() or ['?'])[0]
                raise InputError(f'perf record failed ({first}); kernel.perf_event_paranoid must be <= 2')
            process.stdin.close()
            timings = [float(line) for line in process.stdout.read().split()]
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
        report = subprocess.run([perf, 'report', '-i', data, '--sort', 'dso,sym', '--stdio'], capture_output=True,
                                text=True, check=True).stdout
    return sum(timings) / max(len(timings), 1), group_shares(report)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--presets', nargs='+', default=list(PARAMFILES), choices=sorted(PRESETS))
    p.add_argument('--items', type=int, default=18_752)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--seconds', type=float, default=6.0, help='the perf window per paramfile (default 6)')
    p.add_argument('--child', metavar='PRESET', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, args.items, args.threads)
    perf = shutil.which('perf')
    if perf is None:
        raise InputError('perf not found: install linux-tools (perf) to sample the step')
    print(f'{args.items:,} items, {args.threads} threads, {args.seconds:g} s of samples a paramfile at 2999 Hz; '
          f'load average {os.getloadavg()[0]:.2f} at the start')
    print('| paramfile | ms a step | ' + ' | '.join(GROUPS) + ' |')
    print('|---|---|' + '---|' * len(GROUPS))
    for preset in args.presets:
        ms, shares = sample(preset, args.items, args.threads, args.seconds, perf)
        print(f'| {preset} | {ms:.2f} | ' + ' | '.join(f'{shares[g]:.1f}%' for g in GROUPS) + ' |', flush=True)
    print(f'load average {os.getloadavg()[0]:.2f} at the end')


if __name__ == '__main__':
    run_cli(main)
