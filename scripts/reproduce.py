"""Reproduce the GRU4Rec papers' RSC15 tables: the four baselines and GRU4Rec, beside the published numbers.

    python scripts/reproduce.py --data data/          # on preprocessed RSC15 files (rsc15_train_full / rsc15_test)
    python scripts/reproduce.py --quick               # the real sample when ../shared has it, else synthetic data

Runs, each trained on rsc15_train_full and evaluated on rsc15_test by evaluation.py (every non-first test
click ranked against all training items, standard ties, hit = rank <= K):
  POP, S-POP, Item-KNN, BPR-MF (spec E2);
  GRU4Rec with the ICLR'16 settings (TOP1, BPR, cross-entropy; 100 units, one-hot input, in-batch
  negatives only: presets iclr16_*) and the modern ones (cross-entropy + logQ with a shared embedding,
  rsc15_xe_shared_100; BPR-max, bprmax_shared);
  NARM, STAMP, SASRec and GRU4Rec+ (comparison_models.py; Adam at lr 0.01, 10 epochs).
Writes results/<name>/table.md (Recall@1/5/10/20 and MRR@5/10/20, training time, published figures),
results/<name>/results.json, results/<name>/comparison.png, and the runs' checkpoints under
results/<name>/checkpoints/ (results/ is git-ignored). --quick uses the same settings; only the data is
small (about 10 minutes on a 2-core CPU); its preprocessed files live in a temporary folder.
"""
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoints import write_json  # noqa: E402
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
]


def prepare_quick_data(folder):
    """Preprocess the real sample (or, without ../shared, the synthetic demo data) into folder."""
    raw = SAMPLE if os.path.isfile(SAMPLE) else os.path.join(folder, 'yoochoose-clicks.dat')
    if raw != SAMPLE:
        write_raw(raw, generate(**DEMO))
    preprocessing.preprocess(raw, folder + os.sep, log=lambda *a: None)
    return 'the real sample (../shared/data/yoochoose-clicks-sample.dat)' if raw == SAMPLE else \
        'the synthetic demo data (scripts/make_synthetic.py defaults)'


def run_one(flags, data, checkpoints, device):
    """Train one model on rsc15_train_full, evaluate its last checkpoint on rsc15_test."""
    start = time.perf_counter()
    path, _ = main.main(['--data_folder', data, '--checkpoint_dir', checkpoints, '--device', device, *flags])
    seconds = time.perf_counter() - start
    metrics = main.main(['--is_eval', '--load_model', path, '--data_folder', data, '--valid_data', 'rsc15_test.txt',
                         '--device', device, '--eval_cutoffs', *map(str, CUTOFFS)])
    return dict(metrics, seconds=seconds, checkpoint=os.path.relpath(path, ROOT))


def table(results, runs, source, on_sample):
    lines = [f'Trained on rsc15_train_full, evaluated on rsc15_test of {source}: '
             f'{results[0][1]["n_predictions"]:,} predictions, each test click after the first ranked against all '
             f'training items; {results[0][1]["tie_mode"]} ties (rank = 1 + number of items scored higher); '
             'a hit is rank <= K (the 2016 evaluation code counted rank < K, spec C7).', '',
             '| model | R@1 | R@5 | MRR@5 | R@10 | MRR@10 | R@20 | MRR@20 | time (s) | published R@20 / MRR@20 |'
             + (' official code on the sample |' if on_sample else ''),
             '|---|' + '---|' * (9 + on_sample)]
    for (name, m), (_, _, published, official) in zip(results, runs):
        cells = [name, m['Recall@1'], m['Recall@5'], m['MRR@5'], m['Recall@10'], m['MRR@10'], m['Recall@20'],
                 m['MRR@20']]
        row = '| ' + ' | '.join(c if isinstance(c, str) else f'{c:.4f}' for c in cells)
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


def bar_chart(path, results, runs, on_sample):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    names = [name for name, _ in results]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, key, index in ((axes[0], 'Recall@20', 0), (axes[1], 'MRR@20', 1)):
        x = np.arange(len(names))
        series = [('ours', [m[key] for _, m in results])]
        series.append(('published (full RSC15)', [r[2][index] if r[2] else np.nan for r in runs]))
        if on_sample:
            series.append(('official code, same sample', [r[3][index] if r[3] else np.nan for r in runs]))
        width = 0.8 / len(series)
        for k, (label, values) in enumerate(series):
            ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=label)
        ax.set_xticks(x, names, rotation=35, ha='right', fontsize=8)
        ax.set_title(key)
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomically([path], lambda tmp: fig.savefig(tmp[path], format='png', dpi=90))
    plt.close(fig)


def write_text(path, text):
    def write(tmp):
        with open(tmp[path], 'w') as f:
            f.write(text)
    write_atomically([path], write)


def main_(argv=None):
    p = ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default='data', help='folder holding rsc15_train_full.txt and rsc15_test.txt')
    p.add_argument('--quick', action='store_true', help='run on the real sample (or the synthetic demo data)')
    p.add_argument('--name', help='results/<name> (default: rsc15, or quick)')
    p.add_argument('--results_dir', default=os.path.join(ROOT, 'results'))
    p.add_argument('--only', nargs='+', help='run only these models (names as in the table, e.g. POP Item-KNN)')
    p.add_argument('--device', default='auto')
    args = p.parse_args(argv)
    runs = [r for r in RUNS if not args.only or r[0] in args.only]
    if not runs:
        raise InputError(f'--only {" ".join(args.only)}: no such model (expected some of {", ".join(r[0] for r in RUNS)})')
    if not args.quick:
        for name in ('rsc15_train_full.txt', 'rsc15_test.txt'):
            if not os.path.isfile(os.path.join(args.data, name)):
                raise InputError(f'--data {args.data}: no {name} (run preprocessing.py first, or use --quick)')
    out = os.path.join(args.results_dir, args.name or ('quick' if args.quick else 'rsc15'))
    try:
        os.makedirs(out, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out)
        probe.close()
    except OSError as err:
        raise InputError(f'--results_dir {out}: cannot write there ({err.strerror})') from None
    scratch = tempfile.TemporaryDirectory(prefix='reproduce_')     # the quick data (never kept: no copy of the sample)
    data, source = (scratch.name, prepare_quick_data(scratch.name)) if args.quick else (args.data, args.data)
    on_sample = args.quick and source.startswith('the real sample')
    results = []
    for name, flags, _, _ in runs:
        print(f'== {name}', flush=True)
        results.append((name, run_one(flags, data, os.path.join(out, 'checkpoints'), args.device)))
    scratch.cleanup()
    text = table(results, runs, source, on_sample)
    write_text(os.path.join(out, 'table.md'), text)
    write_json(os.path.join(out, 'results.json'), {'data': source, 'runs': dict(results)})
    bar_chart(os.path.join(out, 'comparison.png'), results, runs, on_sample)
    print('\n' + text + f'\nwrote {out}/table.md, results.json, comparison.png')


if __name__ == '__main__':
    run_cli(main_)
