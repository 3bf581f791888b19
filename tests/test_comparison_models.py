"""comparison_models.py: shapes, padding, SASRec causality, the history state, prefixes, learning."""
import numpy as np
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
         'SASRec': dict(hidden_size=8, inner_size=16), 'GRU4RecPlus': dict(embedding_size=8, hidden_size=12)}


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
    schedules = {'NARM': (3, 64), 'STAMP': (5, 64), 'SASRec': (3, 128), 'GRU4RecPlus': (3, 64)}   # (epochs, batch)
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


def test_bpr_loss_trains(tmp_path):
    data = SessionData(write_split(tmp_path / 't.txt', [(s, f'i{(s + k) % 7}', k) for s in range(40) for k in range(4)]))
    model = STAMP(len(data.item_map), loss_type='BPR', n_negatives=5, n_epochs=3, lr=0.01, batch_size=16)
    losses = list(model.fit(data))
    assert losses[-1] < losses[0] and np.isfinite(losses).all()
