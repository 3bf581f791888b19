"""Every command against bad input: non-zero exit, one clear line, no traceback, nothing written or overwritten.

Each case runs the command as a user would (a subprocess) in a folder that already holds an earlier
run's output, and the folder must be byte for byte the same afterwards.
"""
import glob
import hashlib
import os

import pytest

from conftest import ROOT, run_command, synthetic_split, write_split
import main

GOOD_LINE = '1,2014-04-07T10:51:09.277Z,214536502,0\n'


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """A preprocessed synthetic split and a GRU4Rec checkpoint trained on it."""
    root = tmp_path_factory.mktemp('world')
    raw = synthetic_split(root, 800, 60, seed=8)
    path, _ = main.main(['--data_folder', str(root), '--checkpoint_dir', str(root / 'ck'), '--layers', '8',
                         '--batch_size', '8', '--n_sample', '8', '--n_epochs', '1'])
    good = open(path, 'rb').read()
    return {'root': root, 'raw': raw, 'checkpoint': path, 'truncated': good[:len(good) // 2]}


def snapshot(folder):
    """Every file (with a hash of its bytes) and every folder below `folder`."""
    return {os.path.relpath(p, folder): hashlib.sha256(open(p, 'rb').read()).hexdigest() if os.path.isfile(p)
            else 'folder' for p in glob.glob(str(folder / '**' / '*'), recursive=True)}


def raw_file(tmp, text, binary=False):
    path = tmp / 'clicks.dat'
    path.write_bytes(text) if binary else path.write_text(text)
    return str(path)


def split_file(tmp, text):
    path = tmp / 'split.txt'
    path.write_text(text)
    return str(path)


def foreign_checkpoint(tmp):
    import torch
    path = tmp / 'other.pt'
    torch.save({'state_dict': {'w': torch.zeros(2)}, 'epoch': 3}, path)
    return str(path)


def recommend_args(tmp, world, **changes):
    args = {'load_model': world['checkpoint'], 'input': str(world['root'] / 'rsc15_test.txt'),
            'output': str(tmp / 'recs.tsv'), **changes}
    return [item for key, value in args.items() if value is not None for item in (f'--{key}', value)]


def foreign_test(tmp):
    return write_split(tmp / 'other.txt', [(1, 999000001, 1.0), (1, 999000002, 2.0), (1, 999000001, 3.0)])


# per dataset: a good header, a good view line, the separator, the kept and another event type, the columns
# its error message names
RAW_FORMATS = {
    'diginetica': ('sessionId;userId;itemId;timeframe;eventdate\n', '1;NA;5;100;2016-05-09\n', ';', None, None,
                   'sessionId;userId;itemId;timeframe;eventdate (or session_id;user_id;item_id;...)'),
    'retailrocket': ('timestamp,visitorid,event,itemid,transactionid\n', '1442000000000,1,view,5,\n', ',', 'view',
                     'addtocart', 'timestamp, visitorid, event, itemid'),
    'rees46': ('event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n',
               '2019-11-20 10:00:00 UTC,view,5,1,,,1.0,7,s\n', ',', 'view', 'cart',
               'event_time, event_type, product_id, user_id'),
    'coveo': ('session_id_hash,event_type,product_action,product_skus_hash,server_timestamp_epoch_ms,hashed_url\n',
              'h1,event_product,detail,sku5,1602000000000,u\n', ',', 'detail', 'add',
              'session_id_hash, product_action, product_skus_hash, server_timestamp_epoch_ms'),
}
EVENT_COLUMN = {'retailrocket': 'event', 'rees46': 'event_type', 'coveo': 'product_action'}
FILE_NAMES = {'diginetica': ['train-item-views.csv'], 'retailrocket': ['events.csv'],
              'coveo': ['release_10_23_2020.csv'], 'rees46': ['2019-Oct.csv', '2019-Nov.csv']}


def text_file(tmp, name, text):
    path = tmp / name
    path.write_text(text)
    return str(path)


def dataset_input(tmp, dataset, text):
    """--dataset DATASET --input <its raw file(s), named as distributed, each holding `text`>."""
    return ['--dataset', dataset, '--input', *[text_file(tmp, name, text) for name in FILE_NAMES[dataset]]]


def dataset_cases():
    """Every dataset's raw format against J1's bad inputs (issue 15 section 5)."""
    cases = {}
    for name, (header, line, sep, kept, other, columns) in RAW_FORMATS.items():
        wrong = ',' if sep == ';' else ';'
        first = header.split(sep)[0]
        texts = {'wrong separator': ((header + line).replace(sep, wrong),
                                     f'expected a {"semicolon" if sep == ";" else "comma"}-separated header with '
                                     f'the columns {columns}'),
                 'renamed column': (header.replace(first, 'when', 1) + line, f'with the columns {columns}; missing'),
                 'empty file': ('', f'{FILE_NAMES[name][0]}: the file is empty'),
                 'header only': (header, 'holds a header but no events'),
                 'everything filtered away': (header + line * 3, 'nothing is left after filtering')}
        if kept:
            texts['no event of the kept type'] = (header + line.replace(f',{kept},', f',{other},') * 3,
                                                  f'no event has {EVENT_COLUMN[name]} in {{{kept}}}')
        for title, (text, message) in texts.items():
            cases[f'pre: {name} {title}'] = ('preprocessing.py',
                                             lambda t, w, name=name, text=text: dataset_input(t, name, text), message)
    return cases

# (command, arguments built from (tmp folder, world), what the one line must say)
CASES = {
    'pre: missing file': ('preprocessing.py', lambda t, w: ['--input', str(t / 'none.dat')], 'none.dat: no such file'),
    'pre: empty file': ('preprocessing.py', lambda t, w: ['--input', raw_file(t, '')], 'the file is empty'),
    'pre: binary file': ('preprocessing.py', lambda t, w: ['--input', raw_file(t, bytes(range(256)) * 40, True)],
                         'clicks.dat'),
    'pre: truncated line': ('preprocessing.py', lambda t, w: ['--input', raw_file(t, GOOD_LINE * 3 + '2,2014-04-0')],
                            'line 4'),
    'pre: semicolons': ('preprocessing.py', lambda t, w: ['--input', raw_file(t, GOOD_LINE.replace(',', ';') * 3)],
                        'line 1: expected 4 comma-separated fields'),
    'pre: three columns': ('preprocessing.py', lambda t, w: ['--input', raw_file(t, GOOD_LINE[:-3] + '\n')],
                           'expected 4 comma-separated fields'),
    'pre: non-numeric id': ('preprocessing.py', lambda t, w: ['--input', raw_file(t, GOOD_LINE + 'x9,' + GOOD_LINE[2:])],
                            "line 2: session id must be an integer, got 'x9'"),
    'pre: bad timestamp': ('preprocessing.py', lambda t, w: ['--input', raw_file(t, GOOD_LINE + '1,yesterday,5,0\n')],
                           "line 2: unparsable timestamp 'yesterday'"),
    'pre: negative test_days': ('preprocessing.py', lambda t, w: ['--input', w['raw'], '--test_days', '-1'],
                                '--test_days must be positive'),
    'pre: unknown dataset': ('preprocessing.py', lambda t, w: ['--dataset', 'movielens', '--input', w['raw']],
                             "--dataset: invalid choice: 'movielens'"),
    'pre: custom flag on a fixed dataset': ('preprocessing.py', lambda t, w: ['--dataset', 'rees46', '--user_key', 'u'],
                                            '--user_key is for --dataset custom'),
    'pre: --variant against --dataset': ('preprocessing.py', lambda t, w: ['--variant', 'yoochoose', '--dataset', 'rsc15',
                                                                          '--input', w['raw']], 'contradicts'),
    'pre: rees46 one month only': ('preprocessing.py', lambda t, w: ['--dataset', 'rees46', '--input', text_file(
        t, 'o.csv', RAW_FORMATS['rees46'][0] + RAW_FORMATS['rees46'][1])], 'rees46 takes 2 file(s) (2019-Oct.csv 2019-Nov.csv), got 1'),
    'pre: custom missing column': ('preprocessing.py', lambda t, w: ['--dataset', 'custom', '--input', text_file(
        t, 'log.csv', 'session,item,time\n1,5,10\n'), '--item_key', 'item', '--time_key', 'time'],
        'log.csv: no separator among comma, TAB, semicolon gives a header with the columns SessionId, item, time'),
    'pre: custom wrong separator': ('preprocessing.py', lambda t, w: ['--dataset', 'custom', '--sep', ';', '--input',
        text_file(t, 'log.csv', 'SessionId,ItemId,Time\n1,5,10\n')],
        'log.csv: expected a semicolon-separated header with the columns SessionId, ItemId, Time; missing'),
    'pre: custom empty file': ('preprocessing.py', lambda t, w: ['--dataset', 'custom', '--input', text_file(
        t, 'log.csv', '')], 'log.csv: the file is empty'),
    'pre: custom unparsable time': ('preprocessing.py', lambda t, w: ['--dataset', 'custom', '--input', text_file(
        t, 'log.csv', 'SessionId\tItemId\tTime\n1\t5\t10\n1\t6\tnoon\n')], "log.csv, line 3: unparsable time 'noon'"),
    'pre: custom unparsable iso time': ('preprocessing.py', lambda t, w: ['--dataset', 'custom', '--time_unit', 'iso',
        '--input', text_file(t, 'log.csv', 'SessionId,ItemId,Time\n1,5,2020-01-01 10:00:00\n1,6,2020-01-01 25:00:00\n')],
        "log.csv, line 3: unparsable time '2020-01-01 25:00:00'"),
    'pre: custom session gap 0': ('preprocessing.py', lambda t, w: ['--dataset', 'custom', '--user_key', 'u',
        '--session_gap', '0', '--input', text_file(t, 'log.csv', 'u,ItemId,Time\n1,5,10\n')],
        '--session_gap must be > 0 seconds, got 0'),
    'pre: custom no event of the kept type': ('preprocessing.py', lambda t, w: [
        '--dataset', 'custom', '--event_key', 'kind', '--events', 'view,click', '--input',
        text_file(t, 'log.csv', 'SessionId,ItemId,Time,kind\n1,5,10,buy\n1,6,11,buy\n')],
        'log.csv: no event has kind in {view, click}'),
    'pre: custom everything filtered away': ('preprocessing.py', lambda t, w: ['--dataset', 'custom', '--input', text_file(
        t, 'log.csv', 'SessionId,ItemId,Time\n1,5,10\n2,5,11\n')], 'nothing is left after filtering'),
    'pre: custom without --input': ('preprocessing.py', lambda t, w: ['--dataset', 'custom'],
                                    '--dataset custom needs --input FILE'),
    'train: missing file': ('main.py', lambda t, w: ['--train_data', str(t / 'none.txt')], 'none.txt: no such file'),
    'train: empty file': ('main.py', lambda t, w: ['--train_data', split_file(t, '')], 'split.txt'),
    'train: commas, not TABs': ('main.py', lambda t, w: ['--train_data', split_file(t, 'SessionId,ItemId,Time\n1,2,3\n')],
                                'split.txt'),
    'train: non-numeric time': ('main.py', lambda t, w: ['--train_data', split_file(
        t, 'SessionId\tItemId\tTime\n1\t5\tnoon\n1\t6\t2\n')], 'split.txt'),
    'train: negative batch size': ('main.py', lambda t, w: ['--data_folder', str(w['root']), '--batch_size', '-4'],
                                   '--batch_size must be >= 1'),
    'train: dropout 1': ('main.py', lambda t, w: ['--data_folder', str(w['root']), '--dropout_hidden', '1'],
                         '--dropout_hidden must be in [0, 1)'),
    'train: unknown loss': ('main.py', lambda t, w: ['--data_folder', str(w['root']), '--loss_type', 'hinge'], 'hinge'),
    'train: unknown activation': ('main.py', lambda t, w: ['--data_folder', str(w['root']), '--final_act', 'swish'],
                                  'swish'),
    'train: softmax with TOP1': ('main.py', lambda t, w: ['--data_folder', str(w['root']), '--loss_type', 'TOP1',
                                                          '--final_act', 'softmax'], 'softmax'),
    'train: unknown model': ('main.py', lambda t, w: ['--model', 'NARM9'], "invalid choice: 'NARM9'"),
    'train: kNN similarity of another model': ('main.py', lambda t, w: [
        '--data_folder', str(w['root']), '--model', 'SKNN', '--params', 'similarity=vec'],
        'SKNN parameter similarity must be one of jaccard, cosine, binary'),
    'train: kNN flag as a word': ('main.py', lambda t, w: [
        '--data_folder', str(w['root']), '--model', 'VSKNN', '--params', 'remind=yes'],
        "VSKNN parameter remind must be True or False, got 'yes'"),
    'train: negative STAN decay': ('main.py', lambda t, w: [
        '--data_folder', str(w['root']), '--model', 'STAN', '--params', 'lambda_inh=-2'],
        'STAN parameter lambda_inh must be >= 0'),
    'train: SR-GNN without a GNN step': ('main.py', lambda t, w: [
        '--data_folder', str(w['root']), '--model', 'SRGNN', '--params', 'step=0'], 'SRGNN parameter step must be >= 1'),
    'train: load_model without is_eval': ('main.py', lambda t, w: ['--load_model', w['checkpoint']],
                                          '--load_model is for --is_eval'),
    'eval: no checkpoint given': ('main.py', lambda t, w: ['--is_eval'], '--is_eval needs --load_model'),
    'eval: truncated checkpoint': ('main.py', lambda t, w: ['--is_eval', '--load_model', raw_file(
        t, w['truncated'], True)], 'not a readable checkpoint'),
    'eval: text file as checkpoint': ('main.py', lambda t, w: ['--is_eval', '--load_model', raw_file(t, GOOD_LINE)],
                                      'not a readable checkpoint'),
    'eval: checkpoint trained on other items': ('main.py', lambda t, w: [
        '--is_eval', '--load_model', w['checkpoint'], '--valid_data', foreign_test(t)],
        'no click is on an item of the training set'),
    'eval: baseline flag on a GRU4Rec checkpoint': ('main.py', lambda t, w: [
        '--is_eval', '--load_model', w['checkpoint'], '--model', 'POP', '--data_folder', str(w['root'])],
        'holds a GRU4Rec model, not POP'),
    'recommend: missing checkpoint': ('recommend.py', lambda t, w: recommend_args(t, w, load_model=str(t / 'none.pt')),
                                      'none.pt: no such file'),
    'recommend: checkpoint of another format': ('recommend.py', lambda t, w: recommend_args(
        t, w, load_model=foreign_checkpoint(t)), 'other.pt: not a checkpoint of this project'),
    'recommend: text file as checkpoint': ('recommend.py', lambda t, w: recommend_args(
        t, w, load_model=raw_file(t, GOOD_LINE)), 'not a readable checkpoint'),
    'recommend: unknown device': ('recommend.py', lambda t, w: recommend_args(t, w, device='tpu'),
                                  "--device 'tpu': expected auto, cpu, cuda"),
    'recommend: missing input': ('recommend.py', lambda t, w: recommend_args(t, w, input=str(t / 'none.txt')),
                                 'none.txt: no such file'),
    'recommend: binary input': ('recommend.py', lambda t, w: recommend_args(
        t, w, input=raw_file(t, bytes(range(256)) * 40, True)), 'clicks.dat: header'),
    'recommend: commas, not TABs': ('recommend.py', lambda t, w: recommend_args(
        t, w, input=split_file(t, 'SessionId,ItemId,Time\n1,2,3\n')), 'split.txt: header'),
    'recommend: k above the items': ('recommend.py', lambda t, w: recommend_args(t, w, k='1000'),
                                     '--k must be in 1..'),
    'recommend: no output': ('recommend.py', lambda t, w: recommend_args(t, w, output=None),
                             'needs both --input FILE and --output FILE'),
    'recommend: serve and input': ('recommend.py', lambda t, w: recommend_args(t, w) + ['--serve'],
                                   'either --input FILE --output FILE'),
    'resume: not a run folder': ('main.py', lambda t, w: ['--resume', str(t)], 'no readable config.json'),
    'reproduce: no data': ('scripts/reproduce.py', lambda t, w: ['--data', str(t / 'none'), '--results_dir', str(t)],
                           'no rsc15_train_full.txt'),
    'reproduce: unknown model': ('scripts/reproduce.py', lambda t, w: ['--only', 'GRU5', '--results_dir', str(t)],
                                 '--only GRU5: no such model'),
}
CASES.update(dataset_cases())


@pytest.mark.parametrize('case', CASES)
def test_bad_input(case, world, tmp_path):
    command, build, message = CASES[case]
    (tmp_path / 'checkpoint' / 'earlier').mkdir(parents=True)          # an earlier run's output, to be left alone
    (tmp_path / 'checkpoint' / 'earlier' / 'model_00000.pt').write_bytes(b'earlier weights')
    (tmp_path / 'rsc15_test.txt').write_text('an earlier split\n')
    (tmp_path / 'results.json').write_text('{"earlier": 1}\n')
    argv = build(tmp_path, world)
    before = snapshot(tmp_path)
    defaults = ['--checkpoint_dir', str(tmp_path / 'checkpoint')] if command == 'main.py' else \
        ['--output_dir', str(tmp_path)] if command == 'preprocessing.py' else []
    result = run_command(os.path.join(ROOT, command), *argv, *defaults, cwd=str(tmp_path))
    assert result.returncode == 2, result.stderr                # the README's promise for bad input
    assert 'Traceback' not in result.stderr and result.stderr.count('\n') == 1, result.stderr
    assert result.stderr.startswith('error: ') and message in result.stderr, result.stderr
    assert snapshot(tmp_path) == before                 # nothing half-written, nothing overwritten
