"""SR-GNN (comparison_models.SRGNN): the session graph by hand, the readout against a per-session reference
written from the paper's equations, padding, learning, and the checkpoint round trip through main.py."""
import torch

from baselines import Pop
from comparison_models import SRGNN, session_graphs
from conftest import synthetic_split
from dataset import SessionData
from evaluation import evaluate
import main

N = 30
A, B, C = 2, 5, 9                  # item ids in ascending order, so their nodes are 0, 1, 2


def padded(rows, width):
    sequences = torch.full((len(rows), width), N, dtype=torch.long)
    for r, row in enumerate(rows):
        sequences[r, :len(row)] = torch.tensor(row)
    return sequences, torch.tensor([len(row) for row in rows])


def dense(graph, row, width):
    """Row `row`'s (nodes, A_in, A_out) as dense matrices, from session_graphs' edge list."""
    nodes, alias, src, dst, w_in, w_out = graph
    first, last = int(alias[row].min()), int(alias[row].max()) + 1        # a row's nodes are consecutive
    pairs = slice(row * (width - 1), (row + 1) * (width - 1))
    a_in, a_out = torch.zeros(last - first, last - first), torch.zeros(last - first, last - first)
    a_in.index_put_((dst[pairs] - first, src[pairs] - first), w_in[pairs], accumulate=True)
    a_out.index_put_((src[pairs] - first, dst[pairs] - first), w_out[pairs], accumulate=True)
    return nodes[first:last].tolist(), alias[row] - first, a_in, a_out


def test_session_graph_of_a_session_with_a_repeat():
    # [a, b, a, c]: nodes a, b, c; edges a->b, b->a, a->c. In-degrees a 1, b 1, c 1; out-degrees a 2, b 1, c 0
    # [c, c, a, c, c]: a self-loop c->c (twice, weight 1 once), c->a, a->c. In: a 1, c 2; out: a 1, c 2
    sequences, _ = padded([[A, B, A, C], [C, C, A, C, C], [B]], 6)
    graph = session_graphs(sequences, N)
    nodes, alias, a_in, a_out = dense(graph, 0, 6)
    assert nodes == [A, B, C] and alias[:4].tolist() == [0, 1, 0, 2]
    torch.testing.assert_close(a_in, torch.tensor([[0.0, 1.0, 0.0],       # A_in[v, u] = edge(u->v) / in(v)
                                                   [1.0, 0.0, 0.0],
                                                   [1.0, 0.0, 0.0]]))
    torch.testing.assert_close(a_out, torch.tensor([[0.0, 0.5, 0.5],      # A_out[u, v] = edge(u->v) / out(u)
                                                    [1.0, 0.0, 0.0],
                                                    [0.0, 0.0, 0.0]]))
    nodes, alias, a_in, a_out = dense(graph, 1, 6)
    assert nodes == [A, C] and alias[:5].tolist() == [1, 1, 0, 1, 1]
    torch.testing.assert_close(a_in, torch.tensor([[0.0, 1.0], [0.5, 0.5]]))
    torch.testing.assert_close(a_out, torch.tensor([[0.0, 1.0], [0.5, 0.5]]))
    nodes, alias, a_in, a_out = dense(graph, 2, 6)                         # one click: one node, no edge
    assert nodes == [B] and a_in.tolist() == [[0.0]] and a_out.tolist() == [[0.0]]
    assert len(graph[0]) == 3 + 2 + 1                                      # padding is no node


def reference_scores(model, session):
    """Scores of one session straight from the equations (Wu et al. eq. 1-9, the official code's A), in
    float64 with the model's own weights and plain loops: no batching, no padding, no edge list."""
    p = {name: w.detach().double() for name, w in model.named_parameters()}
    nodes = sorted(set(session))
    index = {item: k for k, item in enumerate(nodes)}
    n, d = len(nodes), p['w_hh'].shape[1]
    edge = torch.zeros(n, n, dtype=torch.float64)
    for u, v in zip(session, session[1:]):
        edge[index[u], index[v]] = 1.0
    a_in, a_out = torch.zeros(n, n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)
    for u in range(n):
        for v in range(n):
            a_in[v, u] = edge[u, v] / max(edge[:, v].sum(), 1.0)
            a_out[u, v] = edge[u, v] / max(edge[u, :].sum(), 1.0)
    h = p['item_embedding.weight'][nodes]
    for _ in range(model.step):
        message = torch.cat([a_in @ (h @ p['linear_edge_in.weight'].T + p['linear_edge_in.bias']) + p['b_iah'],
                             a_out @ (h @ p['linear_edge_out.weight'].T + p['linear_edge_out.bias']) + p['b_oah']], 1)
        gi, gh = message @ p['w_ih'].T + p['b_ih'], h @ p['w_hh'].T + p['b_hh']
        r = torch.sigmoid(gi[:, :d] + gh[:, :d])
        z = torch.sigmoid(gi[:, d:2 * d] + gh[:, d:2 * d])
        candidate = torch.tanh(gi[:, 2 * d:] + r * gh[:, 2 * d:])
        h = (1 - z) * candidate + z * h
    v = torch.stack([h[index[item]] for item in session])
    s_l = v[-1]
    s_g = torch.zeros(d, dtype=torch.float64)
    for v_j in v:
        alpha = p['linear_three.weight'][0] @ torch.sigmoid(p['linear_one.weight'] @ s_l + p['linear_one.bias']
                                                            + p['linear_two.weight'] @ v_j + p['linear_two.bias'])
        s_g += alpha * v_j
    s_h = s_g if model.nonhybrid else p['linear_transform.weight'] @ torch.cat([s_g, s_l]) + p['linear_transform.bias']
    return p['item_embedding.weight'][:N] @ s_h


def test_readout_equals_a_per_session_reference():
    sessions = [[A, B, A, C], [C, C, A, C, C], [B], [7, 3, 3, 28, 7, 0, 11, 3]]
    sequences, lengths = padded(sessions, 9)
    for step, nonhybrid in ((1, False), (2, False), (1, True)):
        torch.manual_seed(step)
        model = SRGNN(N, hidden_size=6, step=step, nonhybrid=nonhybrid).eval()
        got = model.scores(sequences, lengths)
        expected = torch.stack([reference_scores(model, s) for s in sessions]).float()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        double = model.double().scores(sequences, lengths)                    # the graph follows the weights' type
        torch.testing.assert_close(double, torch.stack([reference_scores(model, s) for s in sessions]),
                                   rtol=1e-12, atol=1e-12)


def test_padding_never_changes_a_score():
    torch.manual_seed(0)
    model = SRGNN(N, hidden_size=8, step=2).eval()
    assert torch.count_nonzero(model.item_embedding.weight[N]) == 0 and model.item_vectors().shape == (N, 8)
    rows = [[A, B, A, C], [C, C, A, C, C], [B], [4, 4, 4], [C, A, B, A], [28, 3]]     # some end below their top item
    scores = model.scores(*padded(rows, 5))
    torch.testing.assert_close(model.scores(*padded(rows, 12)), scores)
    torch.testing.assert_close(torch.cat([model.scores(*padded([row], len(row))) for row in rows]), scores,
                               rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        model.item_embedding.weight[N] = torch.randn(8)                      # even a non-zero padding row
    torch.testing.assert_close(model.scores(*padded(rows, 12)), scores)


def test_short_training_beats_popularity(tmp_path, one_thread):
    synthetic_split(tmp_path, 1500, 400, seed=2)
    train = SessionData(str(tmp_path / 'rsc15_train_full.txt'))
    test = SessionData(str(tmp_path / 'rsc15_test.txt'), item_map=train.item_map)
    pop = Pop(len(train.item_map))
    list(pop.fit(train))
    floor = evaluate(pop, test)
    model = SRGNN(len(train.item_map), hidden_size=32, lr=0.01, n_epochs=5, batch_size=64, max_seq_length=10)
    losses = list(model.fit(train))
    got = evaluate(model, test)
    assert losses[-1] < losses[0]      # seeds 42, 1, 2: R@20 0.597-0.613, MRR@20 0.298-0.323; POP 0.375 / 0.090
    assert got['Recall@20'] > floor['Recall@20'] + 0.1 and got['MRR@20'] > floor['MRR@20'] + 0.1, (got, floor)


def test_main_trains_and_reevaluates_srgnn(tmp_path, one_thread):
    synthetic_split(tmp_path, 400, 40, seed=3)
    path, metrics = main.main(['--model', 'SRGNN', '--data_folder', str(tmp_path), '--valid_data', 'rsc15_test.txt',
                               '--checkpoint_dir', str(tmp_path / 'ck'), '--n_epochs', '2', '--hidden_size', '8',
                               '--params', 'step=2,lr_decay_step=2,weight_decay=0.001', '--max_seq_length', '5',
                               '--lr', '0.01'])
    state = torch.load(path, weights_only=True)
    config = state['config']
    assert state['model_name'] == 'SRGNN' and state['epoch'] == 1
    assert (config['hidden_size'], config['step'], config['lr_decay_step'], config['weight_decay'],
            config['max_seq_length'], config['batch_size']) == (8, 2, 2, 0.001, 5, 100)
    torch.manual_seed(7)               # as in a new process: a weight left out of the checkpoint would differ
    again = main.main(['--is_eval', '--load_model', path, '--data_folder', str(tmp_path), '--valid_data', 'rsc15_test.txt'])
    assert again['MRR@20'] == metrics['MRR@20'] and again['Recall@20'] == metrics['Recall@20']


def test_every_tensor_stays_on_the_run_device(tmp_path, one_thread):
    """As tests/test_devices.py does for the other models: with the default device set to meta, a tensor made
    without naming the run's device lands on meta and the first operation mixing it with the model's fails
    (the CPU's stand-in for running on a GPU)."""
    synthetic_split(tmp_path, 300, 40, seed=6)
    data = SessionData(str(tmp_path / 'rsc15_train_full.txt'))
    model = SRGNN(len(data.item_map), hidden_size=8, n_epochs=1, batch_size=64, max_seq_length=10)
    with torch.device('meta'):
        assert all(loss > 0 for loss in model.fit(data))
        assert evaluate(model, data, batch_size=64, device='cpu')['Recall@20'] > 0
