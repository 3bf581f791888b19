"""Reproduce the published tables: the GRU4Rec papers' RSC15 table, or the SR-GNN protocol's (J2) benchmark.

    python scripts/reproduce.py --data data/          # on preprocessed RSC15 files (rsc15_train_full / rsc15_test)
    python scripts/reproduce.py --quick               # the real sample when ../shared has it, else synthetic data
    python scripts/reproduce.py --benchmark srgnn --data DIR --seeds 1 2 3      # an SRG-layout folder
    python scripts/reproduce.py --benchmark srgnn --data DIR --seeds 1 2 3 --resume   # only the runs not yet done

--benchmark srgnn: DIR holds one <name>_train_full.txt / <name>_test.txt pair written by preprocessing.py
(--protocol srgnn or --dataset srgnn_files). POP, S-POP, Item-KNN, BPR-MF, GRU4Rec (rsc15_xe_shared_100
and bprmax_shared), NARM, STAMP (their defaults), SASRec (lr 0.01), GRU4Rec+ (lr 0.002), SKNN, V-SKNN, STAN,
VSTAN (session-rec's defaults) and SR-GNN (its official settings) are trained on train_full and scored on test;
table.md gives R@20 (= the papers' P@20) and MRR@20 as mean +- std over the seeds (n = runs; POP, S-POP,
Item-KNN and the kNN family are deterministic and run once) beside SR-GNN's Table 2 (J2.9).

Runs, each trained on rsc15_train_full and evaluated on rsc15_test by evaluation.py (every non-first test
click ranked against all training items, standard ties, hit = rank <= K):
  POP, S-POP, Item-KNN, BPR-MF (spec E2);
  GRU4Rec with the ICLR'16 settings (TOP1, BPR, cross-entropy; 100 units, one-hot input, in-batch
  negatives only: presets iclr16_*) and the modern ones (cross-entropy + logQ with a shared embedding,
  rsc15_xe_shared_100; BPR-max, bprmax_shared);
  NARM, STAMP, SASRec and GRU4Rec+ (comparison_models.py; Adam at lr 0.01, their default sizes and epochs);
  SKNN, V-SKNN, STAN and VSTAN (session_knn.py; session-rec's default settings).
Writes results/<name>/table.md (Recall@1/5/10/20 and MRR@5/10/20, training time, published figures),
results/<name>/results.json, results/<name>/comparison.png, and the runs' checkpoints under
results/<name>/checkpoints/ (results/ is git-ignored). --quick uses the same settings; only the data is
small (about 10 minutes on a 2-core CPU); its preprocessed files live in a temporary folder.
"""
import json
import os
import statistics
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoints import write_json  # noqa: E402
from config import OTHER_DEFAULTS  # noqa: E402
from provenance import provenance  # noqa: E402
from cli import run_cli, write_atomically, ArgumentParser, InputError  # noqa: E402
import main  # noqa: E402
import preprocessing  # noqa: E402
from scripts.make_synthetic import DEMO, generate, write_raw  # noqa: E402

SAMPLE = os.path.join(ROOT, '..', 'shared', 'data', 'yoochoose-clicks-sample.dat')
CUTOFFS = (1, 5, 10, 20)

# (name, main.py flags, published R@20 / MRR@20 with its source, the official code on the real sample)
RUNS = [
    ('POP', ['--model', 'POP'], (0.0050, 0.0012, "ICLR'16 Table 1"), (0.0899, 0.0265)),
    ('S-POP', ['--model', 'SPOP'], (0.2672, 0.1775, "ICLR'16 Table 1"), (0.3830, 0.2834)),
    ('Item-KNN', ['--model', 'ItemKNN'], (0.5065, 0.2048, "ICLR'16 Table 1"), (0.4733, 0.1936)),
    ('BPR-MF', ['--model', 'BPRMF'], (0.2574, 0.0618, "ICLR'16 Table 1"), (0.42, 0.26, 'about')),
    ('GRU4Rec TOP1 (ICLR\'16)', ['--params', 'iclr16_top1'], (0.5853, 0.2305, "ICLR'16 Table 3"), None),
    ('GRU4Rec BPR (ICLR\'16)', ['--params', 'iclr16_bpr'], (0.6069, 0.2407, "ICLR'16 Table 3"), None),
    ('GRU4Rec XE (ICLR\'16)', ['--params', 'iclr16_xe'], (0.6074, 0.2430, "ICLR'16 Table 3"), None),
    ('GRU4Rec XE + logQ, shared', ['--params', 'rsc15_xe_shared_100'], (0.7283, 0.3205, 'official README'),
     (0.6824, 0.3610)),
    ('GRU4Rec BPR-max, shared', ['--params', 'bprmax_shared'], None, (0.6889, 0.3644)),
    # the comparison models (comparison_models.py), CE over all items, Adam at lr 0.01 (0.001 learns too slowly here)
    ('NARM', ['--model', 'NARM', '--lr', '0.01'], None, None),
    ('STAMP', ['--model', 'STAMP', '--lr', '0.01'], None, None),
    ('SASRec', ['--model', 'SASRec', '--lr', '0.01'], None, None),
    ('GRU4Rec+ (Tan et al.)', ['--model', 'GRU4RecPlus', '--lr', '0.01'], None, None),
    # the session-kNN family (session_knn.py), session-rec's default settings
    ('SKNN', ['--model', 'SKNN'], None, None), ('V-SKNN', ['--model', 'VSKNN'], None, None),
    ('STAN', ['--model', 'STAN'], None, None), ('VSTAN', ['--model', 'VSTAN'], None, None),
]


# the SRG benchmark: (name, main.py flags); published P@20 / MRR@20 (%) of SR-GNN's Table 2 (J2.9) per dataset
SRG_RUNS = [
    ('POP', ['--model', 'POP']), ('S-POP', ['--model', 'SPOP']), ('Item-KNN', ['--model', 'ItemKNN']),
    ('BPR-MF', ['--model', 'BPRMF']),
    ('GRU4Rec XE + logQ, shared', ['--params', 'rsc15_xe_shared_100']),
    ('GRU4Rec BPR-max, shared', ['--params', 'bprmax_shared']),
    ('NARM', ['--model', 'NARM']), ('STAMP', ['--model', 'STAMP']),
    ('SASRec', ['--model', 'SASRec', '--lr', '0.01']),
    # lr 0.01 and 0.005 diverge on YOOCHOOSE 1/64 (the loss jumps in epoch 10 / 9 of some seeds); 0.002 trained
    # stably on its train_tr -> train_valid
    ('GRU4Rec+ (Tan et al.)', ['--model', 'GRU4RecPlus', '--lr', '0.002']),
    ('SKNN', ['--model', 'SKNN']), ('V-SKNN', ['--model', 'VSKNN']), ('STAN', ['--model', 'STAN']),
    ('VSTAN', ['--model', 'VSTAN']),
    ('SR-GNN', ['--model', 'SRGNN']),
]
PUBLISHED = {     # SR-GNN AAAI'19 Table 2; GRU4Rec's rows are third-party runs (the official code was never run there)
    'yoochoose1_64': {'POP': (6.71, 1.65), 'S-POP': (30.44, 18.35), 'Item-KNN': (51.60, 21.81),
                      'BPR-MF': (31.31, 12.08), 'GRU4Rec': (60.64, 22.89), 'NARM': (68.32, 28.63),
                      'STAMP': (68.74, 29.67), 'SR-GNN': (70.57, 30.94)},
    'yoochoose1_4': {'GRU4Rec': (59.53, 22.60), 'NARM': (69.73, 29.23), 'STAMP': (70.44, 30.00),
                     'SR-GNN': (71.36, 31.89)},
    'diginetica': {'GRU4Rec': (29.45, 8.33), 'NARM': (49.70, 16.17), 'STAMP': (45.64, 14.32), 'SR-GNN': (50.73, 17.59)},
}
TIE_RULES = {'standard': 'rank = 1 + number of items scored higher',
             'median': 'rank = 1 + number scored higher + half the others scored equal',
             'conservative': 'rank = number of items scored higher or equal'}
# tune.py's search space of each row (--tune_trials): the same budget for every model that has one
SPACES_DIR = os.path.join(ROOT, 'scripts', 'paramspaces')
TUNE_SPACES = {'Item-KNN': 'itemknn.test', 'GRU4Rec XE + logQ, shared': 'gru4rec_xe.json',
               'GRU4Rec BPR-max, shared': 'gru4rec_bprmax.json', 'NARM': 'narm.test', 'SKNN': 'sknn.test',
               'V-SKNN': 'vsknn.test', 'STAN': 'stan.test', 'VSTAN': 'vstan.test', 'SR-GNN': 'srgnn.test'}
DETERMINISTIC = ('POP', 'SPOP', 'ItemKNN', 'SKNN', 'VSKNN', 'STAN', 'VSTAN')   # (recent sampling: no draw)


def prepare_quick_data(folder):
    """Preprocess the real sample (or, without ../shared, the synthetic demo data) into folder."""
    raw = SAMPLE if os.path.isfile(SAMPLE) else os.path.join(folder, 'yoochoose-clicks.dat')
    os.makedirs(folder, exist_ok=True)
    if raw != SAMPLE:
        write_raw(raw, generate(**DEMO))
    preprocessing.preprocess(raw, folder + os.sep, log=lambda *a: None)
    return 'the real sample (../shared/data/yoochoose-clicks-sample.dat)' if raw == SAMPLE else \
        'the synthetic demo data (scripts/make_synthetic.py defaults)'


def run_one(flags, data, checkpoints, device, train='rsc15_train_full.txt', test='rsc15_test.txt', seed=None,
            tie_mode='standard'):
    """Train one model on `train`, evaluate its last checkpoint on `test`."""
    model = model_of(flags)
    seeded = seed is not None and (model == 'GRU4Rec' or 'seed' in OTHER_DEFAULTS[model])
    start = time.perf_counter()
    path, _ = main.main(['--data_folder', data, '--train_data', train, '--checkpoint_dir', checkpoints,
                         '--device', device, *flags, *(['--seed', str(seed)] if seeded else [])])
    seconds = time.perf_counter() - start
    metrics = main.main(['--is_eval', '--load_model', path, '--data_folder', data, '--valid_data', test,
                         '--device', device, '--eval_cutoffs', *map(str, CUTOFFS), '--tie_mode', tie_mode])
    return dict(metrics, seconds=seconds, seed=seed if seeded else None, checkpoint=os.path.relpath(path, ROOT))


def model_of(flags):
    return flags[flags.index('--model') + 1] if '--model' in flags else 'GRU4Rec'


def seeds_to_run(name, flags, seeds, results):
    """The seeds still to run for one model: all of `seeds` (the first only for a deterministic model) less
    those with a finished, successful run in `results` ([(name, per-seed runs)])."""
    finished = [r for r in dict(results).get(name, []) if 'failed' not in r]
    if model_of(flags) in DETERMINISTIC:
        return [] if finished else seeds[:1]
    done = {r.get('seed') for r in finished}
    return [seed for seed in seeds if seed not in done]


def resumed_results(path, args, train, test, origin, names):
    """--resume: the successful runs of the table's models (`names`) in an earlier results.json of the same
    benchmark on the same data files ([(name, per-seed runs)], its order); `origin` records the provenance it
    was resumed from."""
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as f:
            record = json.load(f)
        runs, earlier = record['runs'], record['provenance']
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f'--resume: {path} is not a results.json of this script ({err})') from None
    counts = lambda p: {os.path.basename(k): v.get('events') for k, v in p.get('data', {}).items()}
    if (record.get('benchmark'), record.get('train'), record.get('test')) != (args.benchmark, train, test) or \
            counts(earlier) != counts(origin):
        raise InputError(f'--resume: {path} holds a {record.get("benchmark")} benchmark on {counts(earlier)}, not '
                         f'{args.benchmark} on {counts(origin)} (pass another --name)')
    origin['resumed_from'] = earlier
    kept = []
    for name, run in runs.items():
        if name not in names:
            continue
        flags = names[name][1]
        same, other = [], []
        for r in run['per_seed']:
            if 'failed' not in r:         # a run of an older results.json has no flags: kept
                (same if r.get('flags', flags) == flags and r.get('tie_mode', 'standard') == args.tie_mode
                 else other).append(r)
        if other:
            print(f'--resume: {len(other)} run(s) of {name} were trained with {" ".join(other[0]["flags"])} and '
                  f'scored with {other[0].get("tie_mode", "standard")} ties; run again with {" ".join(flags)}, '
                  f'{args.tie_mode} ties', file=sys.stderr, flush=True)
        if same:
            kept.append((name, same))
    return kept


def run_seeds(name, seeds, progress, run, results, done=lambda: None):
    """The runs of one model over `seeds` (seeds_to_run's), appended to `results` with `done()` called after
    each, so that a benchmark cut off mid-model keeps its finished seeds; a failure is recorded, not raised."""
    for seed in seeds:
        progress.set_description(f'{name} (seed {seed})')
        try:
            results.append(run(seed))
        except (Exception, SystemExit) as err:      # a NaN run exits 3; the other models go on
            message = f'{type(err).__name__}: {err}'.strip().splitlines()[0][:200]
            print(f'== {name} (seed {seed}) failed: {message}', file=sys.stderr, flush=True)
            traceback.print_exc()
            results.append({'failed': message, 'seed': seed})
        progress.update(1)
        done()
    return results


def summary(runs, key):
    """(mean, std, n) of a metric over the successful runs (std 0 for one run)."""
    values = [r[key] for r in runs if 'failed' not in r]
    if not values:
        return None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def mean_runs(runs):
    """One metrics dict: the mean over the successful runs (None when all failed)."""
    ok = [r for r in runs if 'failed' not in r]
    if not ok:
        return None
    return {k: statistics.mean(r[k] for r in ok) for k, v in ok[0].items() if isinstance(v, (int, float))
            and not isinstance(v, bool) and k != 'seed'}


def table(results, runs, source, on_sample):
    """results: [(name, per-seed runs)] in the order of runs."""
    ok = next((r for _, per_seed in results for r in per_seed if 'failed' not in r), None)
    lines = [f'Trained on rsc15_train_full, evaluated on rsc15_test of {source}: '
             f'{ok["n_predictions"] if ok else 0:,} predictions, each test click after the first ranked against all '
             f'training items; {ok["tie_mode"] if ok else "standard"} ties ({TIE_RULES[ok["tie_mode"] if ok else "standard"]}); '
             'a hit is rank <= K (the 2016 evaluation code counted rank < K, spec C7). Mean (± std) over n seeds.', '',
             '| model | n | R@1 | R@5 | MRR@5 | R@10 | MRR@10 | R@20 | MRR@20 | time (s) | published R@20 / MRR@20 |'
             + (' official code on the sample |' if on_sample else ''),
             '|---|' + '---|' * (10 + on_sample)]
    for (name, per_seed), (_, _, published, official) in zip(results, runs):
        m = mean_runs(per_seed)
        if m is None:
            lines.append(f'| {name} | 0 | **failed** ({per_seed[0]["failed"]}) |' + ' - |' * (8 + on_sample))
            continue
        n = len([r for r in per_seed if 'failed' not in r])
        cells = [m['Recall@1'], m['Recall@5'], m['MRR@5'], m['Recall@10'], m['MRR@10']]
        row = f'| {name} | {n} | ' + ' | '.join(f'{c:.4f}' for c in cells)
        for key in ('Recall@20', 'MRR@20'):
            mean, std, _ = summary(per_seed, key)
            row += f' | {mean:.4f}' + (f' ± {std:.4f}' if n > 1 else '')
        row += f' | {m["seconds"]:.0f} | ' + (f'{published[0]:.4f} / {published[1]:.4f} ({published[2]})'
                                              if published else '-')
        if on_sample:
            row += ' | ' + ('-' if not official else f'about {official[0]:.2f} / {official[1]:.2f}'
                            if official[2:] == ('about',) else f'{official[0]:.4f} / {official[1]:.4f}')
        lines.append(row + ' |')
    lines += ['', 'Published figures are for the full RSC15 data (ICLR\'16: 2016 code, session-id order, rank < K; '
              'official README: the rsc15_xe_shared_100 paramfile)' + (
                  '; the last column is the authors\' code run on this same sample split (spec I2, I3; '
                  'BPR-MF varies by run)' if on_sample else '') + '.']
    return '\n'.join(lines) + '\n'


def published_row(name, published):
    """SR-GNN's figure for a row of ours: GRU4Rec's for every GRU4Rec setting (a third-party run)."""
    key = 'GRU4Rec' if name.startswith('GRU4Rec ') else name
    return published.get(key)


def srg_table(results, published_name, data, prefix, seeds):
    published = PUBLISHED.get(published_name, {})
    ok = next((r for _, per_seed in results for r in per_seed if 'failed' not in r), None)
    lines = [f'SRG benchmark (datasets-spec J2) on {data}: trained on {prefix}_train_full.txt, evaluated on '
             f'{prefix}_test.txt ({ok["n_predictions"] if ok else 0:,} predictions: every test click after the first, '
             f'ranked against all training items, {ok["tie_mode"] if ok else "standard"} ties '
             f'({TIE_RULES[ok["tie_mode"] if ok else "standard"]}), hit = rank <= 20; '
             'R@20 is the papers\' P@20). Mean ± std over n runs (seeds ' + ' '.join(map(str, seeds)) +
             '; POP, S-POP, Item-KNN and the session-kNN family are deterministic: one run).', '',
             '| model | R@20 (P@20) | MRR@20 | n | train s (mean) | published P@20 / MRR@20 (%), SR-GNN Table 2 |',
             '|---|---|---|---|---|---|']
    for name, per_seed in results:
        failed = [r for r in per_seed if 'failed' in r]
        pub = published_row(name, published)
        pub_cell = '-' if pub is None else f'{pub[0]:.2f} / {pub[1]:.2f}' + (
            ' (third-party run, settings unknown)' if name.startswith('GRU4Rec ') else '')
        r20, mrr = summary(per_seed, 'Recall@20'), summary(per_seed, 'MRR@20')
        if r20 is None:
            lines.append(f'| {name} | **failed** ({failed[0]["failed"]}) | - | 0 | - | {pub_cell} |')
            continue
        seconds = statistics.mean(r['seconds'] for r in per_seed if 'failed' not in r)
        note = f' ({len(failed)} failed)' if failed else ''
        spread = (lambda v: f'{v[0]:.4f} ± {v[1]:.4f}') if r20[2] > 1 else (lambda v: f'{v[0]:.4f}')   # n = 1: no std
        lines.append(f'| {name} | {spread(r20)} | {spread(mrr)} | {r20[2]}{note} | {seconds:.0f} | {pub_cell} |')
    if 'SR-GNN' in published and 'SR-GNN' not in dict(results):
        srgnn_row = published['SR-GNN']
        lines.append(f'| SR-GNN (not run here) | - | - | - | - | {srgnn_row[0]:.2f} / {srgnn_row[1]:.2f} |')
    tuned = [r for _, per_seed in results for r in per_seed if 'tuned' in r]
    if tuned:
        lines += ['', f'Tuned rows: {tuned[0]["trials"]} trials each of scripts/tune.py ({tuned[0]["sampler"]} search, '
                  f'seed 42) on {prefix}_train_tr -> {prefix}_train_valid by MRR@20, in the space of '
                  'scripts/paramspaces/ for that model; the best setting retrained on train_full once and scored on '
                  'test; the time column is the whole search. Settings: ' + '; '.join(
                      f'{name.split(" (tuned")[0]}: ' + ', '.join(f'{k}={v}' for k, v in r['tuned'].items())
                      for name, per_seed in results for r in per_seed if 'tuned' in r) + '.']
    lines += ['', ('Published: SR-GNN (Wu et al., AAAI 2019) Table 2, ' + published_name + '; its GRU4Rec row is a '
               'third-party run with unknown settings, set beside every GRU4Rec row here.') if published else
              'No published table for this data (--published).']
    return '\n'.join(lines) + '\n'


def tuned_run(name, flags, trials, data, prefix, out, device, tie_mode='standard', metric='mrr@20'):
    """One model's tuned row: `trials` trials of tune.py's search on <prefix>_train_tr -> _train_valid (the
    search of results/<name>/tune/<model> continues where it stopped), the best setting retrained on train_full
    and scored on test once."""
    from scripts import tune
    model = model_of(flags)
    space = os.path.join(SPACES_DIR, TUNE_SPACES[name])
    base = flags[flags.index('--params') + 1] if model == 'GRU4Rec' else 'rsc15_xe_shared_100'
    try:
        import optuna  # noqa: F401
        sampler = 'tpe'
    except ImportError:
        sampler = 'random'
    settings = dict(model=model, space=space, base=base, metric=metric, data=os.path.abspath(data), prefix=prefix,
                    epochs=None, sampler=sampler, seed=42, quick=False, device=device, trials=trials,
                    tie_mode=tie_mode)
    tune.check_data(settings)
    run_dir = os.path.join(out, 'tune', name.split(' (')[0].replace(' ', '_').replace(',', ''))
    os.makedirs(run_dir, exist_ok=True)
    write_text(os.path.join(run_dir, 'settings.json'), json.dumps(settings, indent=1) + '\n')
    start = time.perf_counter()
    result = tune.search(settings, run_dir, trials)
    return dict(result['test'], seconds=time.perf_counter() - start, seed=None, tuned=result['params'],
                trials=trials, sampler=sampler, checkpoint=result['checkpoint'])


def bar_chart(path, rows, title=''):
    """rows: (name, [(label, mean, std or None)] per metric key) -> grouped bars with error bars."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    names = [name for name, _ in rows]
    keys = list(rows[0][1]) if rows else []
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(13, 4.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        x = np.arange(len(names))
        labels = [label for label, _, _ in rows[0][1][key]]
        width = 0.8 / len(labels)
        for k, label in enumerate(labels):
            values = [series[key][k][1] for _, series in rows]
            errors = [series[key][k][2] or 0.0 for _, series in rows]
            ax.bar(x + (k - (len(labels) - 1) / 2) * width, [np.nan if v is None else v for v in values], width,
                   yerr=errors if any(errors) else None, capsize=3, label=label)
        ax.set_xticks(x, names, rotation=35, ha='right', fontsize=8)
        ax.set_title(f'{key} {title}'.strip())
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomically([path], lambda tmp: fig.savefig(tmp[path], format='png', dpi=90))
    plt.close(fig)


def rsc15_chart_rows(results, runs, on_sample):
    rows = []
    for (name, per_seed), (_, _, published, official) in zip(results, runs):
        series = {}
        for key, index in (('Recall@20', 0), ('MRR@20', 1)):
            ours = summary(per_seed, key)
            series[key] = [('ours', ours[0] if ours else None, ours[1] if ours else None),
                           ('published (full RSC15)', published[index] if published else None, None)]
            if on_sample:
                series[key].append(('official code, same sample', official[index] if official else None, None))
        rows.append((name, series))
    return rows


def srg_chart_rows(results, published_name):
    published = PUBLISHED.get(published_name, {})
    rows = []
    for name, per_seed in results:
        pub = published_row(name, published)
        series = {}
        for key, index in (('Recall@20', 0), ('MRR@20', 1)):
            ours = summary(per_seed, key)
            series[key] = [('ours (mean ± std over seeds)', ours[0] if ours else None, ours[1] if ours else None),
                           ('SR-GNN Table 2', pub[index] / 100 if pub else None, None)]
        rows.append((name, series))
    return rows


def write_text(path, text):
    def write(tmp):
        with open(tmp[path], 'w') as f:
            f.write(text)
    write_atomically([path], write)


def find_prefix(folder):
    """The <name> of the single <name>_train_full.txt in folder (with its <name>_test.txt)."""
    if not os.path.isdir(folder):
        raise InputError(f'--data {folder}: no such folder')
    names = sorted(f[:-len('_train_full.txt')] for f in os.listdir(folder) if f.endswith('_train_full.txt'))
    names = [n for n in names if os.path.isfile(os.path.join(folder, n + '_test.txt'))]
    if len(names) != 1:
        raise InputError(f'--data {folder}: expected one <name>_train_full.txt with its <name>_test.txt, found '
                         f'{len(names)}' + (f' ({", ".join(names)}; pass --prefix)' if names else
                                            ' (run preprocessing.py --protocol srgnn or --dataset srgnn_files)'))
    return names[0]


def guess_published(prefix):
    low = prefix.lower()
    if '1_64' in low:
        return 'yoochoose1_64'
    if '1_4' in low:
        return 'yoochoose1_4'
    return 'diginetica' if 'diginetica' in low else 'none'


def main_(argv=None):
    p = ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--benchmark', choices=['rsc15', 'srgnn'], default='rsc15',
                   help='rsc15: the GRU4Rec papers\' table; srgnn: the SR-GNN protocol\'s (J2)')
    p.add_argument('--data', default='data', help='rsc15: folder holding rsc15_train_full.txt and rsc15_test.txt; '
                   'srgnn: a folder of preprocessing.py --protocol srgnn / --dataset srgnn_files outputs')
    p.add_argument('--prefix', help='srgnn: the <name> of <name>_train_full.txt (default: the only one in --data)')
    p.add_argument('--published', choices=list(PUBLISHED) + ['none'], help='srgnn: which published column '
                   '(default: guessed from the file names)')
    p.add_argument('--seeds', type=int, nargs='+', default=[42], help='one run per seed (default: 42)')
    p.add_argument('--quick', action='store_true', help='rsc15: run on the real sample (or the synthetic demo data)')
    p.add_argument('--name', help='results/<name> (default: rsc15, quick, or the srgnn prefix)')
    p.add_argument('--results_dir', default=os.path.join(ROOT, 'results'))
    p.add_argument('--only', nargs='+', help='run only these models, in this order (names as in the table, e.g. POP '
                   'Item-KNN)')
    p.add_argument('--device', default='auto')
    p.add_argument('--threads', type=int, help='torch threads (default: torch\'s; 1 on a shared machine)')
    p.add_argument('--tune_trials', type=int, metavar='N', help='srgnn: also a tuned row for every model with a '
                   'search space (TUNE_SPACES): N trials of scripts/tune.py on <prefix>_train_tr -> _train_valid by '
                   'MRR@20, the best retrained on train_full and scored on test; the same N for every model')
    p.add_argument('--tuned_only', action='store_true', help='with --tune_trials: only the tuned rows')
    p.add_argument('--tie_mode', default='standard', choices=['standard', 'median', 'conservative'],
                   help='ranks of every run and trial (evaluation.py); median = the expected rank under random '
                   'tie-breaking, fair to models with many equal scores (the kNN family: 0 for most items)')
    p.add_argument('--resume', action='store_true', help='keep the finished runs of results/<name>/results.json '
                   '(same benchmark and data files, same flags) and run only the missing (model, seed) pairs; '
                   'failed runs and runs trained with other flags are run again')
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f'--threads must be >= 1, got {args.threads}')
        import torch
        torch.set_num_threads(args.threads)
    if len(set(args.seeds)) != len(args.seeds):
        raise InputError(f'--seeds must be distinct, got {" ".join(map(str, args.seeds))}')
    srg = args.benchmark == 'srgnn'
    if args.tune_trials is not None and (not srg or args.tune_trials < 1):
        raise InputError('--tune_trials takes N >= 1 and --benchmark srgnn (its data has train_tr / train_valid)')
    if args.tuned_only and args.tune_trials is None:
        raise InputError('--tuned_only needs --tune_trials N')
    if srg and args.quick:
        raise InputError('--quick is for --benchmark rsc15 (for srgnn, preprocess a folder and pass --data)')
    table_runs = SRG_RUNS if srg else RUNS
    by_name = {r[0]: r for r in table_runs}
    unknown = [name for name in args.only or [] if name not in by_name]
    runs = [by_name[name] for name in dict.fromkeys(args.only)] if args.only and not unknown else \
        [] if args.only else list(table_runs)                     # --only: its models, in its order
    if not runs:
        raise InputError(f'--only {" ".join(args.only)}: no such model (expected some of '
                         f'{", ".join(r[0] for r in table_runs)})')
    if srg:
        prefix = args.prefix or find_prefix(args.data)
        train, test = f'{prefix}_train_full.txt', f'{prefix}_test.txt'
        for name in (train, test):
            if not os.path.isfile(os.path.join(args.data, name)):
                raise InputError(f'--data {args.data}: no {name}')
        published_name = args.published or guess_published(prefix)
    else:
        train, test = 'rsc15_train_full.txt', 'rsc15_test.txt'
        if not args.quick:
            for name in (train, test):
                if not os.path.isfile(os.path.join(args.data, name)):
                    raise InputError(f'--data {args.data}: no {name} (run preprocessing.py first, or use --quick)')
    out = os.path.join(args.results_dir, args.name or (prefix if srg else 'quick' if args.quick else 'rsc15'))
    try:
        os.makedirs(out, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out)
        probe.close()
    except OSError as err:
        raise InputError(f'--results_dir {out}: cannot write there ({err.strerror})') from None
    scratch = tempfile.TemporaryDirectory(prefix='reproduce_')     # the quick data (never kept: no copy of the sample)
    data, source = (scratch.name, prepare_quick_data(scratch.name)) if args.quick else (args.data, args.data)
    on_sample = args.quick and source.startswith('the real sample')
    from devices import pick_device
    device = str(pick_device(args.device))
    origin = provenance([os.path.join(data, train), os.path.join(data, test)], args.seeds, device)   # as it starts
    tuned_rows = {f'{name} (tuned: {args.tune_trials} trials)': (name, flags) for name, flags, *_ in runs
                  if args.tune_trials and name in TUNE_SPACES}
    results = resumed_results(os.path.join(out, 'results.json'), args, train, test, origin,
                              dict(by_name, **{row: (row, flags) for row, (_, flags) in tuned_rows.items()})) \
        if args.resume else []
    todo = {name: [] if args.tuned_only else seeds_to_run(name, flags, args.seeds, results)
            for name, flags, *_ in runs}
    tuned = [(row, name, flags) for row, (name, flags) in tuned_rows.items()
             if not [r for r in dict(results).get(row, []) if 'failed' not in r]]
    total = sum(map(len, todo.values())) + len(tuned)
    shown_seeds = sorted({r['seed'] for _, per_seed in results for r in per_seed if r.get('seed') is not None}
                         | set(args.seeds))
    from tqdm import tqdm

    def write_all():           # after every run: a cut-off benchmark leaves what it measured
        record = {'benchmark': args.benchmark, 'data': source, 'train': train, 'test': test, 'provenance': origin,
                  'runs': {name: {'mean': mean_runs(per_seed), 'per_seed': per_seed} for name, per_seed in results}}
        if srg:
            record['published'] = {'table': "SR-GNN AAAI'19 Table 2", 'dataset': published_name,
                                   'figures_percent': PUBLISHED.get(published_name)}
            text = srg_table(results, published_name, args.data, prefix, shown_seeds)
            chart = srg_chart_rows(results, published_name)
        else:
            rows = [by_name[name] for name, _ in results]
            text = table(results, rows, source, on_sample)
            chart = rsc15_chart_rows(results, rows, on_sample)
        write_text(os.path.join(out, 'table.md'), text)
        write_json(os.path.join(out, 'results.json'), record)
        bar_chart(os.path.join(out, 'comparison.png'), chart)
        return text

    with tqdm(total=total, unit='run', disable=None) as progress:
        for name, flags, *_ in runs:
            if name not in dict(results):
                if not todo[name]:                  # --tuned_only: no default row
                    continue
                results.append((name, []))
            per_seed = dict(results)[name]
            run_seeds(name, todo[name], progress, lambda seed: dict(run_one(
                flags, data, os.path.join(out, 'checkpoints'), device, train, test, seed, args.tie_mode), flags=flags),
                per_seed, write_all)
        for row, name, flags in tuned:
            if row not in dict(results):
                results.append((row, []))
            run_seeds(row, [None], progress, lambda _: dict(tuned_run(
                name, flags, args.tune_trials, data, prefix, out, device, args.tie_mode), flags=flags),
                dict(results)[row], write_all)
    text = write_all()
    scratch.cleanup()
    print('\n' + text + f'\nwrote {out}/table.md, results.json, comparison.png')


if __name__ == '__main__':
    run_cli(main_)
