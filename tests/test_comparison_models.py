"""comparison_models.py: shapes, padding, SASRec causality, the history state, prefixes, learning."""
import math
import warnings

import pytest
import torch

from baselines import Pop
from cli import InputError
from comparison_models import COMPARISON_MODELS, STAMP, drop_clicks, GRU4RecPlus
from config import resolve_baseline_config
from conftest import synthetic_split, write_split
from dataset import SessionData
from evaluation import evaluate
import main

N = 30
SMALL = {'NARM': dict(embedding_size=8, hidden_size=12), 'STAMP': dict(embedding_size=8),
         'SASRec': dict(hidden_size=8, inner_size=16), 'GRU4RecPlus': dict(embedding_size=8, hidden_size=12),
         'SRGNN': dict(hidden_size=8, step=2)}


def small(name, max_seq_length=12):
    torch.manual_seed(0)
    return COMPARISON_MODELS[name](N, max_seq_length=max_seq_length, **SMALL[name]).eval()


def padded(rows, width):
    sequences = torch.full((len(rows), width), N, dtype=torch.long)
    for r, row in enumerate(rows):
        sequences[r, :len(row)] = torch.tensor(row)
    return sequences, torch.tensor([len(row) for row in rows])


ROWS = [[3, 7, 7, 1], [5], [2, 9, 4, 4, 8, 0]]


@pytest.mark.parametrize('name', COMPARISON_MODELS)
def test_shapes_and_padding_never_change_scores(name):
    model = small(name)
    sequences, lengths = padded(ROWS, 6)
    session = model.encode(sequences, lengths)
    assert session.shape == (3, model.item_vectors().shape[1]) and model.scores(sequences, lengths).shape == (3, N)
    wider, _ = padded(ROWS, 11)                               # the same sessions with more padding
    torch.testing.assert_close(model.scores(wider, lengths), model.scores(sequences, lengths))
    alone = torch.cat([model.scores(*padded([row], len(row))) for row in ROWS])   # no padding at all
    torch.testing.assert_close(alone, model.scores(sequences, lengths), rtol=1e-5, atol=1e-6)


def test_sasrec_is_causal():
    model = small('SASRec')
    sequences, _ = padded([[2, 9, 4, 4, 8, 0]], 6)
    for t in range(1, 6):
        later_changed = sequences.clone()
        later_changed[0, t:] = torch.tensor([11, 12, 13, 14, 15, 16][:6 - t])
        torch.testing.assert_close(model.encode(later_changed, torch.tensor([t])), model.encode(sequences, torch.tensor([t])))


def test_sasrec_length_groups_give_the_one_padded_batch_vectors():
    model = small('SASRec')
    generator = torch.Generator().manual_seed(3)
    lengths = torch.tensor([5, 1, 12, 3, 2, 8, 1, 4, 9, 6, 12, 7, 2, 11, 10])     # groups 1, 2, 3-4, 5-8, 9-16
    sequences = torch.randint(N, (len(lengths), 12), generator=generator)
    sequences[torch.arange(12)[None, :] >= lengths[:, None]] = N
    grouped = model.encode(sequences, lengths)
    torch.testing.assert_close(grouped, model._encode_padded(sequences, lengths), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(grouped[:-1], grouped[1:])     # distinct rows: a mixed-up row order would show


def test_history_state_keeps_the_last_clicks_in_order():
    model = small('STAMP', max_seq_length=6)
    hidden = model.init_hidden(2)
    for step, items in enumerate([[1, 5], [2, 6], [3, 7], [4, 8], [9, 10], [11, 12], [13, 14], [15, 16]]):
        hidden = model.hidden_step(torch.tensor(items), hidden)
    assert hidden[0].tolist() == [[6, 3, 4, 9, 11, 13, 15], [6, 7, 8, 10, 12, 14, 16]]
    expected = model.scores(*padded([[3, 4, 9, 11, 13, 15]], 6))
    torch.testing.assert_close(model.score_all(hidden[0])[:1], expected)


def test_training_prefixes_and_their_batches(tmp_path):
    data = SessionData(write_split(tmp_path / 't.txt', [(1, 'a', 1), (1, 'b', 2), (1, 'c', 3), (1, 'd', 4),
                                                         (2, 'e', 5), (2, 'a', 6)]))
    model = STAMP(5, embedding_size=4, max_seq_length=2)
    ends, starts = model.training_examples(data)
    assert ends.tolist() == [1, 2, 3, 5] and starts.tolist() == [0, 0, 1, 4]     # a->b, ab->c, bc->d, e->a
    sequences, lengths, targets = model.batch(data.items, ends, starts, 'cpu')
    assert sequences.tolist() == [[0, 5], [0, 1], [1, 2], [4, 5]] and lengths.tolist() == [1, 2, 2, 1]
    assert targets.tolist() == [1, 2, 3, 0]
    plus = GRU4RecPlus(5, finetune_epochs=1, finetune_fraction=0.5, n_epochs=2)
    schedule = plus.epoch_schedule(data)
    assert schedule[:2] == [None, None] and schedule[2].tolist() == [1]            # the newer session only


def test_click_dropout_keeps_order_and_the_last_click():
    torch.manual_seed(0)
    sequences, lengths = padded([[3, 7, 9, 1, 2, 5], [4, 6]], 8)
    seen = set()
    for _ in range(200):
        dropped, kept = drop_clicks(sequences, lengths, 0.5, N)
        for row, length, original in zip(dropped.tolist(), kept.tolist(), ([3, 7, 9, 1, 2, 5], [4, 6])):
            clicks = row[:length]
            assert clicks[-1] == original[-1] and all(v == N for v in row[length:])
            assert clicks == [v for v in original if v in clicks]          # a subsequence, in order
            seen.add(tuple(clicks))
    assert len(seen) > 20 and (5,) in seen and (3, 7, 9, 1, 2, 5) in seen


def test_short_training_beats_popularity(tmp_path):
    synthetic_split(tmp_path, 1500, 400, seed=2)
    train = SessionData(str(tmp_path / 'rsc15_train_full.txt'))
    test = SessionData(str(tmp_path / 'rsc15_test.txt'), item_map=train.item_map)
    pop = Pop(len(train.item_map))
    list(pop.fit(train))
    floor = evaluate(pop, test)['Recall@20']
    # (epochs, batch). NARM at 3 epochs gained 0.105-0.197 over seeds, thread counts and CPU kernels (issue #32:
    # as little as 0.005 above the margin); at 5 epochs 0.152-0.197
    schedules = {'NARM': (5, 64), 'STAMP': (5, 64), 'SASRec': (3, 128), 'GRU4RecPlus': (3, 64)}
    for name, (epochs, batch_size) in schedules.items():     # popularity alone: R@20 0.37 on this split
        model = COMPARISON_MODELS[name](len(train.item_map), lr=0.01, n_epochs=epochs, batch_size=batch_size,
                                        max_seq_length=10)
        list(model.fit(train))
        assert evaluate(model, test)['Recall@20'] > floor + 0.1, name


def test_main_trains_and_reevaluates_a_comparison_model(tmp_path):
    synthetic_split(tmp_path, 400, 40, seed=3)
    path, metrics = main.main(['--model', 'NARM', '--data_folder', str(tmp_path), '--valid_data', 'rsc15_test.txt',
                               '--checkpoint_dir', str(tmp_path / 'ck'), '--n_epochs', '2', '--lr', '0.01',
                               '--params', 'embedding_size=8,hidden_size=8', '--max_seq_length', '5'])
    state = torch.load(path, weights_only=True)
    assert state['model_name'] == 'NARM' and state['config']['max_seq_length'] == 5 and state['epoch'] == 1
    again = main.main(['--is_eval', '--load_model', path, '--data_folder', str(tmp_path), '--valid_data', 'rsc15_test.txt'])
    assert again['MRR@20'] == pytest.approx(metrics['MRR@20'])
    narm = resolve_baseline_config(main.parse_args(['--model', 'NARM', '--params', 'dropout_probs=[0.1,0.3],n_layers=2']),
                                        'NARM')
    assert narm['dropout_probs'] == [0.1, 0.3] and narm['n_layers'] == 2
    with pytest.raises(InputError, match='loss_type must be CE or BPR'):
        main.main(['--model', 'SASRec', '--loss_type', 'TOP1', '--data_folder', str(tmp_path)])
    with pytest.raises(InputError, match='divisible by n_heads'):
        main.main(['--model', 'SASRec', '--params', 'n_heads=3', '--data_folder', str(tmp_path)])


def test_readme_sasrec_bpr_example_through_main(tmp_path, capsys):
    """README: main.py --model SASRec --loss_type BPR --params "n_negatives=100,n_layers=2" --max_seq_length 50
    (smaller and for one epoch here); then --is_eval with --eval_cutoffs given twice and out of order."""
    synthetic_split(tmp_path, 300, 40, seed=3)
    path, _ = main.main(['--model', 'SASRec', '--loss_type', 'BPR', '--params', 'n_negatives=100,n_layers=2,hidden_size=8',
                         '--max_seq_length', '50', '--n_epochs', '1', '--data_folder', str(tmp_path),
                         '--checkpoint_dir', str(tmp_path / 'ck')])
    state = torch.load(path, weights_only=True)
    config = state['config']
    assert (config['loss_type'], config['n_negatives'], config['n_layers'], config['max_seq_length']) == ('BPR', 100, 2, 50)
    assert 0 < state['loss'] < 1                        # BPR's mean -log sigmoid: log 2 = 0.69 untrained
    capsys.readouterr()
    metrics = main.main(['--is_eval', '--load_model', path, '--data_folder', str(tmp_path), '--valid_data',
                         'rsc15_test.txt', '--eval_cutoffs', '10', '3', '10'])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith('Recall@')]
    assert [line.split(':')[0] for line in lines] == ['Recall@3', 'Recall@10']
    assert [k for k in metrics if '@' in k] == ['Recall@3', 'MRR@3', 'Recall@10', 'MRR@10']


def test_bpr_loss_value_and_negatives_other_than_the_target():
    model = STAMP(4, embedding_size=2, loss_type='BPR', n_negatives=3000)
    with torch.no_grad():
        model.item_embedding.weight[:4] = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.0, 3.0]])
    session = torch.tensor([[1.0, 0.0], [0.0, 0.5]])            # scores [2, 0, 0, 0] and [0, 0.5, -0.5, 1.5]
    model.encode = lambda sequences, lengths: session
    targets = torch.tensor([0, 3])
    value = model.loss(None, None, targets, torch.Generator().manual_seed(0)).item()

    def nls(v):
        return -math.log(1 / (1 + math.exp(-v)))
    # row 0: every other item scores 0, so each term is -log sigmoid(2); row 1: the mean over the three others
    expected = (nls(2.0) + (nls(1.5) + nls(1.0) + nls(2.0)) / 3) / 2      # a target drawn as negative adds log 2
    assert value == pytest.approx(expected, abs=0.005)


def test_bpr_training_beats_popularity(tmp_path):
    synthetic_split(tmp_path, 800, 150, seed=4)
    train = SessionData(str(tmp_path / 'rsc15_train_full.txt'))
    test = SessionData(str(tmp_path / 'rsc15_test.txt'), item_map=train.item_map)
    pop = Pop(len(train.item_map))
    list(pop.fit(train))
    floor = evaluate(pop, test, cutoffs=(20,))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = COMPARISON_MODELS['SASRec'](len(train.item_map), hidden_size=32, inner_size=64, loss_type='BPR',
                                            n_negatives=20, n_epochs=5, lr=0.01, batch_size=64, max_seq_length=10)
        losses = list(model.fit(train))
    finally:
        torch.set_num_threads(threads)
    got = evaluate(model, test, cutoffs=(20,))
    assert losses[-1] < losses[0]          # R@20 0.67, MRR@20 0.28 against POP's 0.42 / 0.08
    assert got['Recall@20'] > floor['Recall@20'] + 0.1 and got['MRR@20'] > floor['MRR@20'] + 0.1, (got, floor)


def test_lr_schedule_is_the_official_srgnn_loop_and_fit_applies_it(tmp_path):
    """epoch_lr: `lr` throughout by default; with lr_decay_step the rate of SR-GNN's loop, which steps a StepLR
    at the start of every epoch. fit sets it each epoch and passes weight_decay to Adam."""
    assert [STAMP(5, embedding_size=4, lr=0.01).epoch_lr(e) for e in range(12)] == [0.01] * 12
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.001)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.1)
    official = []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')             # "lr_scheduler.step() before optimizer.step()": as there
        for _ in range(10):
            scheduler.step()
            official.append(optimizer.param_groups[0]['lr'])
            optimizer.step()
    model = STAMP(5, embedding_size=4, lr=0.001, lr_decay_step=3, lr_decay=0.1)
    assert [model.epoch_lr(e) for e in range(10)] == pytest.approx(official, rel=1e-12)
    assert official[:6] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-4, 1e-5])
    data = SessionData(write_split(tmp_path / 't.txt', [(1, 'a', 1), (1, 'b', 2), (1, 'c', 3), (2, 'b', 4),
                                                         (2, 'a', 5), (3, 'c', 6), (3, 'a', 7)]))

    def fitted(epochs, **settings):
        torch.manual_seed(0)
        model = STAMP(3, embedding_size=4, lr=0.01, n_epochs=epochs, batch_size=2, **settings)
        list(model.fit(data))
        return model.state_dict()
    once, twice = fitted(1, lr_decay_step=2, lr_decay=0.0), fitted(2, lr_decay_step=2, lr_decay=0.0)
    assert all(torch.equal(once[k], twice[k]) for k in once)           # the second epoch ran at rate 0
    assert not torch.equal(fitted(2)['w1.weight'], twice['w1.weight'])
    assert not torch.equal(fitted(1, weight_decay=100.0)['w1.weight'], fitted(1)['w1.weight'])
