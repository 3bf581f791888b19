"""The GPU check of issue #16: every step of the CUDA path a user meets, run once on one device, with a
report. Needs nothing but the repository (synthetic data); 2 minutes on one H200 (2026-12-04) before steps 8
and 11 were added (estimated 4-8 minutes with them, most of it compiling Triton kernels for six paramfiles).

    scripts/gpu_check.sh                         # --device cuda, report to benchmarks/GPU.md
    scripts/gpu_check.sh --device cpu            # the same steps on the CPU (about 2 minutes on 2 cores)
    scripts/gpu_check.sh --device cpu --quick    # tiny sizes, same steps (the test suite runs this)

Steps (D = --device):
  1. torch, CUDA, device name and compute capability; the device as main.py's --device picks it;
  2. synthetic clicks (scripts/make_synthetic.py), preprocessed;
  3. 2 epochs of GRU4Rec (rsc15_xe_shared_100 settings) on D and on the CPU: Recall@20 within 0.01 (one
     run when D is the CPU);
  4. --is_eval of D's checkpoint on the CPU: metrics equal to D's own to 1e-4;
  5. a plain `torch.load(weights_only=True)` of that checkpoint in a process with CUDA hidden;
  6. --resume on D: 1 epoch, then --resume to 2, bit-equal to 2 epochs in one go (on a GPU both with
     --deterministic: its atomics otherwise sum in varying order and the runs drift apart);
  7. the fast step against the plain one on D (under --deterministic): from one state (after 0 and 40
     steps; XE at 100 units, BPR-max with ELU at 512), one step of each: the states equal bits (the
     device repeats itself), the gradients equal to 1e-3 of the largest (1e-5 on the CPU), the losses to
     1e-5. Whole runs are not compared: training is chaotic in rounding (a 1e-7 relative change of the
     weights grows to 1.4 after 50 steps), and the two paths' kernels round differently on a GPU;
  8. the static-step modes of issue #31 (static, compiled, and on a GPU graph and compiled_graph) against
     the fast step on D: from the state after `before` steps of the mode (5 and 200: a graph mode's
     compared step is a replay), one step of each from copies of one state (XE at 100 units, BPR-max with
     ELU at 512, and TOP1 with the one-hot input against the plain step; dropout off, as a CUDA graph draws its own numbers): weights and optimiser state within
     1e-5 of the largest value (the updates themselves are reported too), losses within 1e-5;
     On a GPU also the evaluation with its full-batch steps replayed from a CUDA graph against the eager
     one (the trained checkpoint's test metrics within 1e-9);
  9. one epoch of every other model (baselines and comparison models) on D, evaluated;
 10. scripts/bench_train.py --quick --device D: events/s, evaluation predictions/s, peak GPU memory;
 11. on a GPU, scripts/bench_static_step.py --device D over the six paramfiles at 37,500 items: every step
     mode's events/s and its first call (compilation, capture).
The report (markdown: date, device, one row per check, the benchmark's table) goes to --report (default
benchmarks/GPU.md for cuda, none for cpu). Exit status 1 when a check fails; every step runs regardless.
"""
import argparse
import contextlib
import datetime
import io
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')   # before CUDA starts (--deterministic steps)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402

import main  # noqa: E402
from cli import InputError  # noqa: E402
from config import MODELS, OTHER_DEFAULTS  # noqa: E402
from devices import pick_device  # noqa: E402
import preprocessing  # noqa: E402
from scripts.make_synthetic import generate, write_raw  # noqa: E402

SIZES = {   # sessions, items of the synthetic data; GRU4Rec settings; other models' settings; bench size knobs
    'full': dict(sessions=12_000, items=800, gru4rec=['--params', 'rsc15_xe_shared_100'],
                 others=dict(batch_size=256, max_seq_length=20, finetune_epochs=1), bench=[]),
    'quick': dict(sessions=1_000, items=100, gru4rec=['--params', 'rsc15_xe_shared_100', '--layers', '16',
                  '--batch_size', '16', '--n_sample', '32', '--sample_store', '32000'],
                  others=dict(batch_size=512, max_seq_length=10, n_factors=8, finetune_epochs=1),
                  bench=['--steps', '30', '--rounds', '1', '--synthetic_sessions', '3000', '--settings', '1']),
}
STEP_COMPARE = '''
import sys, torch
sys.path.insert(0, {root!r})
from config import DEFAULTS, PRESETS
from dataset import SessionData
from devices import make_deterministic
from training import train_epoch, training_setup
make_deterministic()       # CUBLAS_WORKSPACE_CONFIG is in the environment from the start
data = SessionData({train!r})
for preset in ('rsc15_xe_shared_100', 'diginetica_bprmax_shared'):
    config = {{**DEFAULTS, **PRESETS[preset], 'sample_store': 100_000}}
    for before in (0, 40):
        runs = []
        for fast in (True, False):        # the same `before` fast steps, then one step of each path
            torch.manual_seed(config['seed'])
            run = training_setup(dict(config, fast_step=True), data, {device!r})
            model, optimizer = run[:2]
            if before:
                train_epoch(*run, dict(config, fast_step=True), {device!r}, max_steps=before)
            state = [p.detach().clone() for p in model.parameters()]
            grads, update = [], optimizer.update
            optimizer.update = lambda: grads.append([p.grad.to_dense().clone() for p in model.parameters()]) or update()
            loss = train_epoch(*run, dict(config, fast_step=fast), {device!r}, max_steps=1)[0]
            runs.append((state, loss, grads[0]))
        (state_f, loss_f, grad_f), (state_p, loss_p, grad_p) = runs
        same_start = all(torch.equal(a, b) for a, b in zip(state_f, state_p))
        gap = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(grad_f, grad_p))
        print(preset, before, int(same_start), abs(loss_f - loss_p) / abs(loss_p), gap)
'''


def step_mode_gaps(train_file, device, modes, befores, overrides):
    """{mode: (largest difference of weights and optimiser state / their largest value, of the updates / the
    largest update, of the losses)} between one step of the mode and one fast step from copies of one state
    (the state after `before` steps of the mode), over the XE and BPR-max paramfiles and the one-hot input of
    iclr16_top1, whose reference is the plain step (gpu_check step 8)."""
    import copy
    from config import DEFAULTS, PRESETS
    from dataset import SessionData
    from training import train_epoch, training_setup
    data = SessionData(train_file)
    worst = {}

    def gap(a, b):
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))

    for preset in ('rsc15_xe_shared_100', 'diginetica_bprmax_shared', 'iclr16_top1'):
        config = {**DEFAULTS, **PRESETS[preset], 'sample_store': 100_000, 'dropout_input': 0.0,
                  'dropout_hidden': 0.0, **overrides}
        for mode in modes:
            for before in befores:
                torch.manual_seed(config['seed'])
                run = training_setup(config, data, device)
                model, optimizer, loss_fn, iterator, sampler, logq = run
                train_epoch(*run, dict(config, step_mode=mode), device, max_steps=before)
                start = [t.detach().clone() for t in model.parameters()]
                twin_model, twin_optimizer, twin_sampler = copy.deepcopy((model, optimizer, sampler))
                loss = train_epoch(*run, dict(config, step_mode=mode), device, max_steps=1)[0]
                fast = train_epoch(twin_model, twin_optimizer, loss_fn, iterator, twin_sampler, logq,
                                   dict(config, step_mode='fast'), device, max_steps=1)[0]
                pairs = list(zip(model.parameters(), twin_model.parameters()))
                state = max([gap(a, b) for a, b in pairs] + [gap(optimizer.state[a][k], twin_optimizer.state[b][k])
                                                             for a, b in pairs for k in ('acc', 'velocity')
                                                             if twin_optimizer.state[b][k].abs().max() > 0])
                update = max(gap(a - s0, b - s0) for (a, b), s0 in zip(pairs, start))
                gaps = (state, update, abs(loss - fast) / abs(fast))
                worst[mode] = tuple(max(x, y) for x, y in zip(worst.get(mode, (0, 0, 0)), gaps))
    return worst


class Checks:
    def __init__(self):
        self.rows, self.failed = [], False

    def record(self, step, ok, detail):
        self.failed |= ok is False
        mark = {True: 'ok', False: 'FAIL', None: 'info'}[ok]
        self.rows.append((step, mark, detail))
        print(f'[{mark}] {step}: {detail}', flush=True)

    def run(self, step, function):
        """Run one step; an exception is a failed check, not the end of the script."""
        start = time.perf_counter()
        try:
            ok, detail = function()
        except (Exception, SystemExit) as err:      # main.py exits on a NaN loss
            text = str(err).strip().splitlines()
            ok, detail = False, f'{type(err).__name__}: {text[0][:200] if text else ""}'
        self.record(step, ok, f'{detail} ({time.perf_counter() - start:.1f} s)')


def quiet_main(argv):
    """main.main(argv) with its printing kept out of the report's stream."""
    with contextlib.redirect_stdout(io.StringIO()):
        return main.main(argv)


def python(args, env=None, timeout=600):
    """stdout of `python args...` run in the repository; RuntimeError with its last stderr line if it fails."""
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                            env=dict(os.environ, **(env or {})))
    if result.returncode != 0:
        raise RuntimeError((result.stderr.strip().splitlines() or ['exit status %d' % result.returncode])[-1])
    return result.stdout


def environment(device):
    cuda = torch.version.cuda or 'none (CPU build)'
    line = f'torch {torch.__version__}, CUDA {cuda}, device {device}'
    if device.startswith('cuda'):
        index = torch.device(device).index
        major, minor = torch.cuda.get_device_capability(index)
        line += (f' = {torch.cuda.get_device_name(index)}, capability sm_{major}{minor}, '
                 f'{torch.cuda.get_device_properties(index).total_memory / 2 ** 30:.1f} GiB; '
                 f'this torch has kernels for {" ".join(torch.cuda.get_arch_list())}')
    else:
        line += f', {torch.get_num_threads()} threads'
    return line


def checks(args, folder):
    size = SIZES['quick' if args.quick else 'full']
    report = Checks()
    try:
        device = pick_device(args.device)
    except InputError as err:
        report.record('device', False, str(err))
        return report, None
    if device == 'cpu' and args.device != 'cpu':
        report.record('device', False, f'--device {args.device} fell back to the CPU')
    report.record('environment', None, environment(device))
    data = os.path.join(folder, 'data')
    raw = os.path.join(data, 'yoochoose-clicks.dat')
    def synthetic():
        os.makedirs(data)
        write_raw(raw, generate(size['sessions'], size['items'], days=20, seed=1))
        with contextlib.redirect_stdout(io.StringIO()):
            preprocessing.preprocess(raw, data + '/', log=lambda *a: None)
        with open(os.path.join(data, 'rsc15_stats.json')) as f:
            stats = json.load(f)
        sets = stats['sets']
        return True, f'{size["sessions"]:,} sessions on {size["items"]:,} items generated; ' + ', '.join(
            f'{name[:-4]} {sets[name]["events"]:,} events, {sets[name]["items"]:,} items'
            for name in ('rsc15_train_full.txt', 'rsc15_test.txt'))
    report.run('synthetic data (scripts/make_synthetic.py, preprocessing.py)', synthetic)
    common = ['--data_folder', data, '--valid_data', 'rsc15_test.txt', *size['gru4rec']]
    runs = {}

    def train(name, device_, epochs, *extra):
        path, metrics = quiet_main([*common, '--n_epochs', str(epochs), '--device', device_,
                                    '--checkpoint_dir', os.path.join(folder, name), *extra])
        runs[name] = (path, metrics)
        return path, metrics

    def two_devices():
        start = time.perf_counter()
        _, on_device = train('device', device, 2)
        middle = time.perf_counter()
        _, on_cpu = train('cpu', 'cpu', 2) if device != 'cpu' else runs['device']    # on the CPU: one run
        gap = abs(on_device['Recall@20'] - on_cpu['Recall@20'])
        return gap <= 0.01, (f'Recall@20 {on_device["Recall@20"]:.4f} on {device} ({middle - start:.1f} s), '
                             f'{on_cpu["Recall@20"]:.4f} on cpu ({time.perf_counter() - middle:.1f} s): '
                             f'difference {gap:.4f} (<= 0.01)')
    report.run('2 epochs of GRU4Rec on the device and on the CPU', two_devices)

    def eval_on_cpu():
        path, own = runs['device']
        metrics = quiet_main(['--is_eval', '--load_model', path, '--data_folder', data, '--valid_data',
                              'rsc15_test.txt', '--device', 'cpu'])
        gap = max(abs(metrics[k] - own[k]) for k in own if '@' in k)
        return gap <= 1e-4, f'largest metric difference {gap:.2e} (<= 1e-4) over {metrics["n_predictions"]:,} predictions'
    report.run(f'--is_eval of the {device} checkpoint on the CPU', eval_on_cpu)

    def plain_load():
        out = python(['-c', 'import sys, torch; s = torch.load(sys.argv[1], weights_only=True); '
                      'print(torch.cuda.is_available(), sorted({t.device.type for t in s["model"].values()}), '
                      's["device"])', runs['device'][0]], env={'CUDA_VISIBLE_DEVICES': ''}).split()
        return out[0] == 'False' and out[1:-1] == ["['cpu']"], f'CUDA hidden: loads, weights on {out[1]}, saved by {out[-1]}'
    report.run('plain torch.load of that checkpoint with CUDA hidden', plain_load)

    def resume():
        """1 epoch, then --resume to 2, against 2 epochs in one go; with --deterministic on a GPU (its
        atomics sum in varying order otherwise, and the runs drift apart), so equal bits everywhere."""
        flags = ['--deterministic'] if device != 'cpu' else []
        try:
            whole, _ = train('whole', device, 2, *flags) if flags else runs['device']
            path, _ = train('resumed', device, 1, *flags)
            quiet_main(['--resume', os.path.dirname(path), '--n_epochs', '2', '--device', device, *flags])
        finally:
            torch.use_deterministic_algorithms(False)       # the steps after this one run as users run
        resumed = torch.load(os.path.join(os.path.dirname(path), 'model_00001.pt'), weights_only=True)
        whole = torch.load(whole, weights_only=True)
        gap = max(float((resumed['model'][k] - whole['model'][k]).abs().max()) for k in whole['model'])
        equal = gap == 0 and resumed['metrics'] == whole['metrics']
        return equal, (f'after 1 + 1 epochs vs 2{" (--deterministic)" if flags else ""}: largest weight difference '
                       f'{gap:.2e}, Recall@20 {resumed["metrics"]["Recall@20"]:.4f} vs '
                       f'{whole["metrics"]["Recall@20"]:.4f} (equal bits required)')
    report.run(f'--resume on {device}', resume)

    def fast_vs_plain():
        """One step of each path from one state (training is chaotic in rounding: a 1e-7 relative change
        of the weights grows to 1.4 after 50 steps, so whole runs of two paths whose kernels round
        differently cannot be compared weight by weight)."""
        train_file = os.path.join(data, 'rsc15_train_full.txt')
        out = python(['-c', STEP_COMPARE.format(root=ROOT, train=train_file, device=device)]).split('\n')
        rows = [line.split() for line in out if line.strip()]
        exact = device == 'cpu'
        worst, loss_gap = (max(float(row[i]) for row in rows) for i in (4, 3))
        starts = all(row[2] == '1' for row in rows)
        ok = starts and worst <= (1e-5 if exact else 1e-3) and loss_gap <= 1e-5
        return ok, ('one step of each from the same state (XE at 100 units, BPR-max at 512; after 0 and 40 '
                    f'steps), --deterministic: the states equal bits {"yes" if starts else "NO"}; largest gradient '
                    f'difference {worst:.1e} of the largest gradient (<= {1e-5 if exact else 1e-3:g}), loss '
                    f'{loss_gap:.1e} (<= 1e-5)')
    report.run(f'fast vs plain training step on {device}', fast_vs_plain)

    def step_modes():
        modes = ['static', 'compiled'] + (['graph', 'compiled_graph'] if device != 'cpu' else [])
        overrides = dict(layers=[16], batch_size=16, n_sample=32) if args.quick else {}
        befores = (5, 20) if args.quick else (5, 200)
        with contextlib.redirect_stdout(io.StringIO()):          # "compiled the static step in ..."
            worst = step_mode_gaps(os.path.join(data, 'rsc15_train_full.txt'), device, modes, befores, overrides)
        ok = all(state <= 1e-5 and loss <= 1e-5 for state, _, loss in worst.values())
        return ok, ('one step of each mode and of the fast step from one state (XE at 100 units, BPR-max at 512, '
                    'one-hot TOP1 against plain, '
                    f'dropout off; after {befores[0]} and {befores[1]} steps), largest difference / largest value: '
                    + '; '.join(f'{mode}: weights and optimiser state {state:.1e}, updates {update:.1e}, loss '
                                f'{loss:.1e}' for mode, (state, update, loss) in worst.items()) + ' (<= 1e-5 but the updates)')
    report.run(f'static-step modes vs the fast step on {device}', step_modes)

    def graph_evaluation():
        """The trained checkpoint's test metrics with the full-batch steps replayed from a CUDA graph (as the
        graph modes evaluate) against the eager evaluation: the same ranks, the sums in another order."""
        from checkpoints import load_checkpoint
        from dataset import SessionData
        from devices import CudaGraphs
        from evaluation import evaluate
        model, _, item_map, _ = load_checkpoint(runs['device'][0], device)
        test = SessionData(os.path.join(data, 'rsc15_test.txt'), item_map=item_map)
        eager = evaluate(model, test, device=device)
        replayed = evaluate(model, test, device=device, graphs=CudaGraphs)
        gap = max(abs(replayed[k] - eager[k]) for k in eager if '@' in k)
        return gap <= 1e-9, f'largest metric difference {gap:.1e} (<= 1e-9) over {eager["n_predictions"]:,} predictions'
    if device != 'cpu':
        report.run(f'the evaluation replayed from a CUDA graph vs eager on {device}', graph_evaluation)

    def other_models():
        done = []
        for name in MODELS[1:]:
            start = time.perf_counter()
            settings = {k: v for k, v in size['others'].items() if k in OTHER_DEFAULTS[name]}
            _, metrics = quiet_main(['--model', name, '--data_folder', data, '--valid_data', 'rsc15_test.txt',
                                     '--device', device, '--checkpoint_dir', os.path.join(folder, 'others'),
                                     *(['--n_epochs', '1'] if 'n_epochs' in OTHER_DEFAULTS[name] else []),
                                     *(['--params', ','.join(f'{k}={v}' for k, v in settings.items())]
                                       if settings else [])])
            done.append(f'{name} R@20 {metrics["Recall@20"]:.3f} ({time.perf_counter() - start:.1f} s)')
        return True, ', '.join(done)
    report.run(f'one epoch of every other model on {device}', other_models)

    bench = []

    def benchmark():
        out = python(['scripts/bench_train.py', '--quick', '--device', device, *size['bench']])
        bench.extend(line for line in out.splitlines() if line.startswith('|'))
        header, first = ([cell.strip() for cell in line.split('|')] for line in (bench[0], bench[2])) \
            if len(bench) > 2 else ([], [])
        cell = dict(zip(header, first))
        return True, (f'fast {cell.get("fast events/s", "?")} events/s, evaluation '
                      f'{cell.get("eval predictions/s", "?")} predictions/s, replayed from a CUDA graph '
                      f'{cell.get("graph eval predictions/s", "?")} (table below)')
    report.run(f'scripts/bench_train.py --quick --device {device}', benchmark)
    report.bench = bench
    modes_table = []

    def modes_benchmark():
        out = python(['scripts/bench_static_step.py', '--device', device, '--threads', '1', '--steps', '100', '--rounds', '1',
                      '--presets', 'rsc15_xe_shared_100', 'yoochoose_xe_shared', 'rees46_xe_shared', 'coveo_bprmax_shared',
                      'retailrocket_bprmax_shared', 'diginetica_bprmax_shared'])
        modes_table.extend(line for line in out.splitlines() if line.startswith('|'))
        rsc15 = {row.split('|')[4].strip(): row.split('|')[7].strip() for row in modes_table[2:]
                 if row.split('|')[1].strip() == 'rsc15_xe_shared_100'}
        return True, 'rsc15_xe_shared_100 events/s: ' + ', '.join(f'{m} {v}' for m, v in rsc15.items()) + ' (table below)'
    if device != 'cpu':
        report.run(f'scripts/bench_static_step.py --device {device} (37,500 items, every step mode)', modes_benchmark)
    report.modes_table = modes_table
    return report, device


def write_report(path, report, device, args, seconds):
    lines = [f'# GPU check (`scripts/gpu_check.sh --device {args.device}{" --quick" if args.quick else ""}`)', '',
             f'{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, device {device}, '
             f'{seconds / 60:.1f} minutes in all.', '', '| check | result | detail |', '|---|---|---|']
    lines += [f'| {step} | {mark} | {detail} |' for step, mark, detail in report.rows]
    if getattr(report, 'bench', None):
        lines += ['', '`scripts/bench_train.py --quick`:', ''] + report.bench
    if getattr(report, 'modes_table', None):
        lines += ['', '`scripts/bench_static_step.py` (37,500 items, random batches):', ''] + report.modes_table
    text = '\n'.join(lines) + '\n'
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path + '.tmp', 'w') as f:
            f.write(text)
        os.replace(path + '.tmp', path)
        print(f'report: {path}')


def run(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cuda', help='cuda (default), cuda:<n> or cpu')
    p.add_argument('--report', help='markdown report (default benchmarks/GPU.md on a GPU, none on the CPU)')
    p.add_argument('--quick', action='store_true', help='tiny data and models: the same steps in well under a minute')
    args = p.parse_args(argv)
    report_path = args.report or (None if args.device == 'cpu' else os.path.join(ROOT, 'benchmarks', 'GPU.md'))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        report, device = checks(args, folder)
    write_report(report_path, report, device, args, time.perf_counter() - start)
    print('all checks passed' if not report.failed else 'SOME CHECKS FAILED', flush=True)
    return 1 if report.failed else 0


if __name__ == '__main__':
    sys.exit(run())
