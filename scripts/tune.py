"""Hyper-parameter search on the validation split, then one retrain on train_full reported on test.

    python scripts/tune.py --space xe --trials 50                       # GRU4Rec, the official XE space
    python scripts/tune.py --space bprmax --trials 50 --metric recall@20
    python scripts/tune.py --model ItemKNN --space scripts/paramspaces/itemknn.test --trials 10
    python scripts/tune.py --resume tune/<run> [--trials 80]            # continue an interrupted search
    python scripts/tune.py --quick                                      # 5 trials of 1 epoch on the real sample

Every trial trains `--model` with main.py on rsc15_train_tr.txt (`--prefix`: <prefix>_train_tr.txt) and is
scored on rsc15_train_valid.txt
(`--metric`, from the last epoch); its row (parameters, metrics, seconds, status) is appended to
tune/<run>/trials.csv as soon as it ends, its output to tune/<run>/logs/. A trial that fails (NaN loss,
refused settings) is recorded as failed and the search goes on. At the end the best setting is
retrained on rsc15_train_full.txt and evaluated once on rsc15_test.txt: tune/<run>/best.json and
tune/<run>/search.png (the metric per trial, and against the two parameters that matter most).

Search: Optuna's TPE when optuna is installed (`--sampler auto`), else plain random search, reproducible
from `--seed`. Settings not in the space come from `--base` (a GRU4Rec preset; default the one of the
space's loss) and `--epochs`.

Space files, one parameter per line, names official or ours (checked against the model's settings):
  official JSON lines: {"name": "learning_rate", "dtype": "float", "values": [0.01, 0.25], "step": 0.005}
                       (dtype int / float / categorical; "step" optional; "log": true for a log scale)
  hyper.test lines:    learning_rate choice [0.01,0.005,0.001]
                       alpha uniform 0.2,0.8
                       learning_rate loguniform -8,0          (exp of a uniform draw, as hyperopt's)
Shipped: scripts/paramspaces/gru4rec_xe.json and gru4rec_bprmax.json (the official spaces; `--space
xe` / `bprmax`), itemknn.test and narm.test (examples), and sknn / vsknn / stan / vstan.test (session-rec's
search spaces for RSC15, conf/save/rsc15/window/opt).
"""
import ast
import contextlib
import csv
import json
import math
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from checkpoints import new_run_dir, write_json  # noqa: E402
from cli import run_cli, write_atomically, ArgumentParser, InputError  # noqa: E402
from config import DEFAULTS, MODELS, OFFICIAL_NAMES, OTHER_DEFAULTS, PRESETS  # noqa: E402
import main  # noqa: E402
from scripts.reproduce import prepare_quick_data, write_text  # noqa: E402

SPACES = {'xe': os.path.join(ROOT, 'scripts', 'paramspaces', 'gru4rec_xe.json'),
          'bprmax': os.path.join(ROOT, 'scripts', 'paramspaces', 'gru4rec_bprmax.json')}
SPACE_BASE = {'xe': 'rsc15_xe_shared_100', 'bprmax': 'bprmax_shared'}


# ---------------------------------------------------------------- spaces

def read_space(path, model):
    """[{name, key, kind, low, high, step, log, choices}] from a space file; InputError naming the line."""
    if not os.path.isfile(path):
        raise InputError(f'--space {path}: no such file (or use xe / bprmax)')
    known = set(DEFAULTS) if model == 'GRU4Rec' else set(OTHER_DEFAULTS[model])
    space = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            where = f'{path}, line {number}'
            param = _json_line(line, where) if line.startswith('{') else _hyper_line(line, where)
            param['key'] = OFFICIAL_NAMES.get(param['name'], param['name']) if model == 'GRU4Rec' \
                else param['name']
            if param['key'] not in known:
                raise InputError(f'{where}: {model} has no parameter {param["name"]!r} '
                                 f'(expected one of {", ".join(sorted(known))})')
            if any(p['key'] == param['key'] for p in space):
                raise InputError(f'{where}: {param["name"]!r} appears twice')
            space.append(param)
    if not space:
        raise InputError(f'{path}: no parameters in the space file')
    return space


def _json_line(line, where):
    try:
        raw = json.loads(line)
        name, kind, values = raw['name'], raw['dtype'], raw['values']
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f'{where}: expected {{"name": .., "dtype": .., "values": [..]}} ({err})') from None
    if kind == 'categorical':
        return _choice(name, values, where)
    if kind not in ('int', 'float'):
        raise InputError(f'{where}: dtype must be int, float or categorical, got {kind!r}')
    return _range(name, kind, values, raw.get('step'), bool(raw.get('log', False)), where)


def _hyper_line(line, where):
    parts = line.split(None, 2)
    if len(parts) != 3:
        raise InputError(f'{where}: expected "name choice [a,b,..]", "name uniform lo,hi" or '
                         f'"name loguniform lo,hi", got {line!r}')
    name, kind, rest = parts
    try:
        values = ast.literal_eval(rest if rest.lstrip().startswith('[') else f'[{rest}]')
    except (ValueError, SyntaxError):
        raise InputError(f'{where}: cannot read the values {rest!r}') from None
    if kind == 'choice':
        return _choice(name, values, where)
    if kind == 'uniform':
        return _range(name, 'float', values, None, False, where)
    if kind == 'loguniform':
        return _range(name, 'float', [math.exp(v) for v in _pair(values, where)], None, True, where)
    raise InputError(f'{where}: unknown kind {kind!r} (expected choice, uniform or loguniform)')


def _pair(values, where):
    if not isinstance(values, (list, tuple)) or len(values) != 2 or \
            not all(isinstance(v, (int, float)) for v in values):
        raise InputError(f'{where}: expected two numbers lo,hi, got {values!r}')
    return values


def _choice(name, values, where):
    if not isinstance(values, (list, tuple)) or not values:
        raise InputError(f'{where}: {name} has no choices')
    return dict(name=name, kind='categorical', choices=list(values))


def _range(name, kind, values, step, log, where):
    low, high = _pair(values, where)
    if not low <= high or (log and low <= 0) or (step is not None and step <= 0):
        raise InputError(f'{where}: {name}: bad range {low}..{high}' + (f' step {step}' if step else ''))
    return dict(name=name, kind=kind, low=low, high=high, step=step, log=log)


def sample_random(space, rng):
    """One random setting: uniform over the grid, the range or the choices (log-uniform when log)."""
    params = {}
    for p in space:
        if p['kind'] == 'categorical':
            params[p['name']] = p['choices'][rng.integers(len(p['choices']))]
        elif p['step']:
            count = int(math.floor((p['high'] - p['low']) / p['step'] + 1e-9)) + 1
            value = p['low'] + p['step'] * rng.integers(count)
            params[p['name']] = int(round(value)) if p['kind'] == 'int' else value
        elif p['log']:
            value = math.exp(rng.uniform(math.log(p['low']), math.log(p['high'])))
            params[p['name']] = int(round(value)) if p['kind'] == 'int' else value
        else:
            value = rng.uniform(p['low'], p['high'])
            params[p['name']] = int(round(value)) if p['kind'] == 'int' else value
    return params


def optuna_distributions(space):
    import optuna.distributions as d
    out = {}
    for p in space:
        if p['kind'] == 'categorical':
            out[p['name']] = d.CategoricalDistribution(p['choices'])
        elif p['kind'] == 'int':
            out[p['name']] = d.IntDistribution(int(p['low']), int(p['high']), step=int(p['step'] or 1), log=p['log'])
        else:
            out[p['name']] = d.FloatDistribution(p['low'], p['high'], step=p['step'], log=p['log'])
    return out


# ---------------------------------------------------------------- trials

def trial_argv(settings, space, params, train, valid):
    """main.py arguments for one run with these parameters."""
    cutoff = settings['metric'].split('@')[1]
    argv = ['--model', settings['model'], '--data_folder', settings['data'], '--train_data', train,
            '--valid_data', valid, '--eval_cutoffs', cutoff, '--device', settings['device'],
            '--tie_mode', settings.get('tie_mode', 'standard')]
    if settings['model'] != 'GRU4Rec':
        pairs = [f'{p["key"]}={params[p["name"]]}' for p in space]
        return argv + ['--params', ','.join(pairs)] + (['--n_epochs', str(settings['epochs'])]
                                                        if settings['epochs'] and 'n_epochs' in
                                                        OTHER_DEFAULTS[settings['model']] else [])
    argv += ['--params', settings['base'], '--seed', str(settings['seed'])]
    if settings['epochs']:
        argv += ['--n_epochs', str(settings['epochs'])]
    for p in space:
        value = params[p['name']]
        if isinstance(value, bool):
            argv.append(f'--{"" if value else "no-"}{p["key"]}')
        else:
            argv += [f'--{p["key"]}', str(value)]
    return argv


def run_trial(argv, checkpoints, log_path):
    """Train and score one setting quietly; (metrics or None, error text, checkpoint or None)."""
    with open(log_path, 'w') as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            path, metrics = main.main(argv + ['--checkpoint_dir', checkpoints])
            return metrics, '', path
        except InputError as err:
            return None, str(err), None
        except SystemExit as stop:        # main.py's NaN stop (exit 3)
            return None, f'stopped with exit status {stop.code} (NaN loss?); see {log_path}', None


def metric_key(metric):
    kind, _, k = metric.partition('@')
    return {'mrr': 'MRR', 'recall': 'Recall'}[kind] + '@' + k


# ---------------------------------------------------------------- results

def read_trials(path):
    if not os.path.isfile(path):
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def append_trial(path, row, fields):
    new = not os.path.isfile(path)
    with open(path, 'a', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def influence(space, rows):
    """{parameter: strength} over the finished trials: |Spearman correlation| with the metric for numbers,
    the correlation ratio (share of the metric's variance between groups) for choices."""
    values = np.array([float(r['value']) for r in rows])
    out = {}
    if len(rows) < 3 or values.std() == 0:
        return {p['name']: 0.0 for p in space}
    for p in space:
        column = [r[p['name']] for r in rows]
        if p['kind'] == 'categorical':
            groups = {c: values[[x == c for x in column]] for c in set(column)}
            between = sum(len(g) * (g.mean() - values.mean()) ** 2 for g in groups.values())
            out[p['name']] = float(between / (len(values) * values.var()))
        else:
            x = np.argsort(np.argsort([float(v) for v in column])).astype(float)
            y = np.argsort(np.argsort(values)).astype(float)
            out[p['name']] = 0.0 if x.std() == 0 else float(abs(np.corrcoef(x, y)[0, 1]))
    return out


def plot_search(path, space, rows, metric):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    done = [r for r in rows if r['status'] == 'ok']
    strength = influence(space, done)
    top = sorted(space, key=lambda p: -strength[p['name']])[:2]
    fig, axes = plt.subplots(1, 1 + len(top), figsize=(5 * (1 + len(top)), 4))
    axes = np.atleast_1d(axes)
    trials = [int(r['trial']) for r in done]
    values = [float(r['value']) for r in done]
    axes[0].plot(trials, values, 'o', label='trial')
    axes[0].plot(trials, np.maximum.accumulate(values) if values else [], '-', label='best so far')
    axes[0].set(xlabel='trial', ylabel=f'{metric} (validation)', title='search')
    axes[0].legend(fontsize=8)
    for ax, p in zip(axes[1:], top):
        column = [r[p['name']] for r in done]
        x = column if p['kind'] == 'categorical' else [float(v) for v in column]
        ax.plot(x, values, 'o')
        ax.set(xlabel=p['name'], ylabel=metric, title=f'{p["name"]} (influence {strength[p["name"]]:.2f})')
        if p.get('log'):
            ax.set_xscale('log')
    fig.tight_layout()
    write_atomically([path], lambda tmp: fig.savefig(tmp[path], format='png', dpi=90))
    plt.close(fig)


def parse_value(p, text):
    if p['kind'] == 'int':
        return int(float(text))
    if p['kind'] == 'float':
        return float(text)
    for choice in p['choices']:
        if str(choice) == text:
            return choice
    return text


# ---------------------------------------------------------------- the search

def search(settings, run_dir, n_trials):
    space = read_space(settings['space'], settings['model'])
    trials_path = os.path.join(run_dir, 'trials.csv')
    k = settings['metric'].split('@')[1]
    fields = ['trial', 'status', 'value', f'recall@{k}', f'mrr@{k}', 'seconds'] + [p['name'] for p in space] + ['error']
    rows = read_trials(trials_path)
    key = metric_key(settings['metric'])
    os.makedirs(os.path.join(run_dir, 'logs'), exist_ok=True)
    study, distributions = None, None
    if settings['sampler'] == 'tpe':
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        distributions = optuna_distributions(space)
        study = optuna.create_study(direction='maximize', sampler=optuna.samplers.TPESampler(seed=settings['seed']))
        for r in rows:
            params = {p['name']: parse_value(p, r[p['name']]) for p in space}
            state = optuna.trial.TrialState.COMPLETE if r['status'] == 'ok' else optuna.trial.TrialState.FAIL
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, state=state,
                                                      value=float(r['value']) if r['status'] == 'ok' else None))
    for number in range(len(rows), n_trials):
        if study is not None:
            trial = study.ask(distributions)
            params = trial.params
        else:
            params = sample_random(space, np.random.default_rng([settings['seed'], number]))
        params = {k: round(v, 10) if isinstance(v, float) else v for k, v in params.items()}   # 0.1 + 0.2 -> 0.3
        start = time.perf_counter()
        prefix = settings.get('prefix', 'rsc15')
        argv = trial_argv(settings, space, params, f'{prefix}_train_tr.txt', f'{prefix}_train_valid.txt')
        with tempfile.TemporaryDirectory(prefix='trial_') as checkpoints:
            metrics, error, _ = run_trial(argv, checkpoints, os.path.join(run_dir, 'logs', f'trial_{number:04d}.log'))
        value = metrics[key] if metrics else None
        row = dict(trial=number, status='ok' if metrics else 'failed', value='' if value is None else f'{value:.6f}',
                   seconds=f'{time.perf_counter() - start:.1f}', error=error, **params)
        for name in (f'Recall@{k}', f'MRR@{k}'):
            row[name.lower()] = f'{metrics[name]:.6f}' if metrics else ''
        append_trial(trials_path, row, fields)
        rows.append({k: str(v) for k, v in row.items()})
        if study is not None and metrics:
            study.tell(trial, value)
        elif study is not None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        print(f'trial {number}: ' + (f'{key} {value:.4f}' if metrics else f'failed ({error})') +
              f'  {row["seconds"]} s  ' + ' '.join(f'{k}={v}' for k, v in params.items()), flush=True)
    done = [r for r in rows if r['status'] == 'ok']
    if not done:
        raise InputError(f'{trials_path}: every trial failed (see {run_dir}/logs)')
    best = max(done, key=lambda r: float(r['value']))
    params = {p['name']: parse_value(p, best[p['name']]) for p in space}
    prefix = settings.get('prefix', 'rsc15')
    print(f'best: trial {best["trial"]} {key} {float(best["value"]):.4f}; retraining on {prefix}_train_full.txt',
          flush=True)
    argv = trial_argv(settings, space, params, f'{prefix}_train_full.txt', f'{prefix}_test.txt')
    argv[argv.index('--eval_cutoffs') + 1:argv.index('--eval_cutoffs') + 2] = ['1', '5', '10', '20']
    metrics, error, checkpoint = run_trial(argv, os.path.join(run_dir, 'checkpoints'),
                                           os.path.join(run_dir, 'logs', 'final.log'))
    if metrics is None:
        raise InputError(f'the retrain of the best setting failed: {error}')
    result = {'model': settings['model'], 'metric': settings['metric'], 'best_trial': int(best['trial']),
              'params': params, 'valid': {key: float(best['value'])}, 'test': metrics,
              'checkpoint': os.path.relpath(checkpoint, ROOT), 'trials': len(rows), 'failed': len(rows) - len(done),
              'influence': {k: round(v, 4) for k, v in influence(space, done).items()}, 'settings': settings}
    write_json(os.path.join(run_dir, 'best.json'), result)
    plot_search(os.path.join(run_dir, 'search.png'), space, rows, key)
    print(f'test ({metrics["n_predictions"]:,} predictions): ' +
          '  '.join(f'{k} {v:.4f}' for k, v in metrics.items() if '@' in k))
    print(f'wrote {run_dir}/trials.csv, best.json, search.png')
    return result


def main_(argv=None):
    p = ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='GRU4Rec', choices=MODELS)
    p.add_argument('--space', help='xe, bprmax or a space file (default: xe for GRU4Rec)')
    p.add_argument('--trials', type=int, help='number of trials in all (default 20; 5 with --quick)')
    p.add_argument('--metric', default='mrr@20', help='mrr@K or recall@K on the validation split')
    p.add_argument('--data', default='data', help='folder of the <prefix>_*.txt files')
    p.add_argument('--prefix', default='rsc15', help='file prefix: <prefix>_train_tr.txt, _train_valid, _train_full, '
                   '_test (default rsc15)')
    p.add_argument('--base', help='GRU4Rec preset for the settings outside the space (default: by space)')
    p.add_argument('--epochs', type=int, help='epochs per trial and for the retrain (default: the model\'s)')
    p.add_argument('--tie_mode', default='standard', choices=['standard', 'median', 'conservative'],
                   help='the ranks of trials and retrain (evaluation.py; median for models with many equal scores, '
                   'such as the kNN family)')
    p.add_argument('--sampler', default='auto', choices=['auto', 'tpe', 'random'])
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--tune_dir', default='tune', help='searches go to <tune_dir>/<MMDDHHMM>')
    p.add_argument('--resume', metavar='RUN', help='continue the search in this folder')
    p.add_argument('--quick', action='store_true', help='5 trials of 1 epoch on the real sample (or synthetic data)')
    p.add_argument('--device', default='auto')
    args = p.parse_args(argv)
    if args.resume:
        try:
            with open(os.path.join(args.resume, 'settings.json')) as f:
                settings = json.load(f)
        except (OSError, ValueError):
            raise InputError(f'--resume {args.resume}: no readable settings.json (not a tune.py folder)') from None
        run_dir, n_trials = args.resume, args.trials or settings['trials']
        settings['trials'] = n_trials
    else:
        kind, _, k = args.metric.lower().partition('@')
        if kind not in ('mrr', 'recall') or not k.isdigit() or int(k) < 1:
            raise InputError(f'--metric {args.metric}: expected mrr@K or recall@K')
        space = args.space or ('xe' if args.model == 'GRU4Rec' else None)
        if space is None:
            raise InputError(f'--model {args.model} needs --space FILE (e.g. scripts/paramspaces/itemknn.test)')
        if args.trials is not None and args.trials < 1:
            raise InputError(f'--trials must be >= 1, got {args.trials}')
        if args.epochs is not None and args.epochs < 1:
            raise InputError(f'--epochs must be >= 1, got {args.epochs}')
        sampler = args.sampler
        if sampler == 'auto':
            try:
                import optuna  # noqa: F401
                sampler = 'tpe'
            except ImportError:
                sampler = 'random'
        base = args.base or SPACE_BASE.get(space, 'rsc15_xe_shared_100')
        if base not in PRESETS:
            raise InputError(f'--base {base}: expected a preset ({", ".join(PRESETS)})')
        settings = dict(model=args.model, space=os.path.abspath(SPACES.get(space, space)), base=base,
                        metric=f'{kind}@{k}', data=os.path.abspath(args.data), prefix=args.prefix,
                        tie_mode=args.tie_mode,
                        epochs=args.epochs or
                        (1 if args.quick else None), sampler=sampler, seed=args.seed, quick=args.quick,
                        device=args.device, trials=args.trials or (5 if args.quick else 20))
        read_space(settings['space'], settings['model'])          # refuse bad input before any folder exists
        check_data(settings)
        run_dir, n_trials = new_run_dir(args.tune_dir), settings['trials']
    write_text(os.path.join(run_dir, 'settings.json'), json.dumps(settings, indent=1) + '\n')
    if settings['quick']:
        with tempfile.TemporaryDirectory(prefix='tune_data_') as data:
            print(f'data: {prepare_quick_data(data)}')
            return search(dict(settings, data=data, prefix='rsc15'), run_dir, n_trials)
    check_data(settings)
    return search(settings, run_dir, n_trials)


def check_data(settings):
    if settings['quick']:
        return
    prefix = settings.get('prefix', 'rsc15')
    for name in (f'{prefix}_train_tr.txt', f'{prefix}_train_valid.txt', f'{prefix}_train_full.txt', f'{prefix}_test.txt'):
        if not os.path.isfile(os.path.join(settings['data'], name)):
            raise InputError(f'--data {settings["data"]}: no {name} (run preprocessing.py first, or use --quick)')


if __name__ == '__main__':
    run_cli(main_)
