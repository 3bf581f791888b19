"""Where a GRU4Rec training step spends its time: torch.profiler over the real training loop.

    python scripts/profile_train.py                          # rsc15_xe_shared_100 on the real sample
    python scripts/profile_train.py --n_sample 512 --steps 500 --params bprmax_shared
    python scripts/profile_train.py --params rees46_xe_shared --train data/rsc15_train_full.txt   # other data

    python scripts/profile_train.py --params yoochoose_xe_shared --step_mode compiled   # the compiled step's kernels

Runs train_epoch (the loop main.py trains with) for `--steps` mini-batches after a warm-up, under
torch.profiler, and prints the operators by self CPU time: microseconds per step, share of the step and
calls per step, plus the wall time per step. `--step_mode` (default fast: the step a bare train_epoch takes
for `auto`): with `compiled`, the compiled static step's own kernels are listed by name (Inductor's
`graph_N_cpp_fused_...`, each a fusion of the operators in its name; the matrix products stay aten::mm /
addmm), with the row updates after its graph as `row_kernel.row_update`: for this the step is compiled
with Inductor's Python wrapper and its kernel profiling on (cpp.enable_kernel_profile), since the C++
wrapper's calls are invisible to torch.profiler; the Python wrapper's own time shows as `## Call
CompiledFxGraph ...`. Data: `--train` (a training file of preprocessing.py), else the real sample when
../shared has it, else the synthetic demo data. Findings are recorded in benchmarks/RESULTS.md.
"""
import contextlib
import io
import os
import sys
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from cli import run_cli, ArgumentParser  # noqa: E402
from config import resolve_config  # noqa: E402
from dataset import SessionData  # noqa: E402
from devices import keep_freed_memory  # noqa: E402
import main  # noqa: E402
import row_kernel  # noqa: E402
from scripts.reproduce import prepare_quick_data  # noqa: E402
import static_step  # noqa: E402
from training import train_epoch, training_setup  # noqa: E402


def run(argv=None):
    p = ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--params', default='rsc15_xe_shared_100', help='a GRU4Rec preset')
    p.add_argument('--n_sample', type=int, help='override the preset\'s n_sample')
    p.add_argument('--steps', type=int, default=300)
    p.add_argument('--warmup', type=int, default=50)
    p.add_argument('--top', type=int, default=25)
    p.add_argument('--train', help='a training file (SessionId, ItemId, Time) instead of the sample')
    p.add_argument('--step_mode', default='fast', choices=static_step.STEP_MODES,
                   help="the training step (default fast); compiled lists the compiled step's kernels")
    args = p.parse_args(argv)
    overrides = ['--n_sample', str(args.n_sample)] if args.n_sample is not None else []
    overrides += ['--step_mode', args.step_mode]
    with kernels_named() if args.step_mode in static_step.COMPILED_MODES else contextlib.nullcontext():
        profile_steps(args, overrides)


def profile_steps(args, overrides):
    config = resolve_config(main.parse_args(['--params', args.params, *overrides]))
    if args.train:
        data, source = SessionData(args.train), args.train
    else:
        with tempfile.TemporaryDirectory(prefix='profile_') as folder:
            with contextlib.redirect_stdout(io.StringIO()):
                source = prepare_quick_data(folder)
            data = SessionData(os.path.join(folder, 'rsc15_train_full.txt'))
    torch.manual_seed(config['seed'])
    keep_freed_memory()             # as training.train does on the CPU (else buffers are page-faulted in every step)
    run_state = training_setup(config, data, 'cpu')
    train_epoch(*run_state, config, 'cpu', max_steps=args.warmup)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        _, targets, steps = train_epoch(*run_state, config, 'cpu', max_steps=args.steps)
        seconds = time.perf_counter() - start
    print(f'{args.params} (n_sample {config["n_sample"]}, batch {config["batch_size"]}, layers {config["layers"]}, '
          f'step {static_step.mode_in_effect(config, run_state[0], run_state[1])}) on {source}; '
          f'{torch.get_num_threads()} threads')
    print(f'{steps} steps, {targets / seconds:,.0f} events/s under the profiler, {1e6 * seconds / steps:,.0f} us per step\n')
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows)
    print('| operator | self us / step | share | calls / step |')
    print('|---|---|---|---|')
    for e in rows[:args.top]:
        print(f'| {e.key} | {e.self_cpu_time_total / steps:,.1f} | {100 * e.self_cpu_time_total / total:.1f}% | '
              f'{e.count / steps:.1f} |')
    rest = sum(e.self_cpu_time_total for e in rows[args.top:])
    print(f'| (all other operators) | {rest / steps:,.1f} | {100 * rest / total:.1f}% | |')
    print(f'| operators in all | {total / steps:,.1f} | | {sum(e.count for e in rows) / steps:.0f} |')


@contextlib.contextmanager
def kernels_named():
    """Within: torch.profiler sees inside the compiled step (Inductor's Python wrapper, its kernels' own
    profiling events, a record_function around each row_kernel call), compiled afresh (a step compiled before
    in this process has no profiling events); all of it is restored after."""
    from torch._inductor import config as inductor
    update, wrapper, compiled = row_kernel.row_update, static_step.CompiledStep.CPP_WRAPPER, static_step._compiled

    def named(*args, **kwargs):
        with torch.profiler.record_function('row_kernel.row_update'):
            return update(*args, **kwargs)
    row_kernel.row_update, static_step.CompiledStep.CPP_WRAPPER, static_step._compiled = named, False, None
    try:
        with inductor.patch({'cpp.enable_kernel_profile': True}):
            yield
    finally:
        row_kernel.row_update, static_step.CompiledStep.CPP_WRAPPER = update, wrapper
        static_step._compiled = compiled


if __name__ == '__main__':
    run_cli(run)
