"""The session models that followed GRU4Rec, trained and scored on the same files and evaluation.

* NARM (Li et al., CIKM 2017): item embeddings -> GRU; the last state is the global encoder, an
  attention over all states (query: the last state) the local one; their concatenation, through a
  bilinear map, scores every item embedding. Dropout 0.25 on the embeddings, 0.5 before the map.
* STAMP (Liu et al., KDD 2018): embeddings; attention over the session's embeddings using the last
  click and the session mean; two tanh MLP cells (general interest from the attention output, current
  interest from the last click); score = trilinear product <h_s, h_t, x_i>.
* SASRec (Kang & McAuley, ICDM 2018): embeddings + learned positions (64), 2 post-norm transformer layers
  (2 heads, inner 256, GELU, dropout 0.5, layer-norm eps 1e-12), causal attention, weights N(0, 0.02);
  the output at the last click scores the item embeddings.
* GRU4Rec+ (Tan et al., DLRS 2016): GRU4Rec over whole sequences with the paper's three additions:
  prefix augmentation (as every model here), dropout of whole input clicks (`click_dropout`) and
  recency fine-tuning (`finetune_epochs` more epochs on the most recent `finetune_fraction` of the
  training sessions, by first click).
* SR-GNN (Wu et al., AAAI 2019): each prefix as a graph of its distinct items (an edge per consecutive pair,
  normalised by in- and out-degree), a gated GNN over it, soft attention over the clicks' node states with the
  last click's; Adam with L2 and the official lr schedule (SRGNN's docstring).

Hyper-parameter names and defaults as the models' reference documentation (RecBole) gives them, except
NARM's and STAMP's, which follow their papers and a learning rate / epoch count chosen on validation data
(see COMPARISON_DEFAULTS), and SR-GNN's, which follow the authors' code (hiddenSize -> hidden_size, step,
nonhybrid, l2 -> weight_decay, lr_dc_step -> lr_decay_step, lr_dc -> lr_decay) and an epoch count chosen so.
Training (`fit`): every prefix of every training session predicts its next click (the last
`max_seq_length` clicks kept), in shuffled mini-batches built on the fly from positions, so memory does
not grow with max_seq_length; loss `CE` (softmax over all items) or `BPR` (against `n_negatives` items
drawn uniformly from the items other than the target); Adam (optionally with L2 and a stepped lr).
Scoring (`init_hidden` / `hidden_step` / `score_all`, the interface evaluate() uses): the state of a test
session is its click history so far (the last max_seq_length clicks and their count), and every prediction
runs the encoder over that history, so each test click is ranked exactly as for GRU4Rec: all items, the
same prediction events, the same ties.

Sequences are right-padded with the extra item index N (its embedding row is zero and never scored);
the GRU models read them packed, NARM's and STAMP's attention masks the padding, SASRec's causal mask
keeps later positions out of earlier ones, SR-GNN's graph leaves it out, so padding never changes a
score (tested).
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class SequenceModel(nn.Module):
    """Prefix training and history-based scoring shared by the comparison models."""

    def __init__(self, n_items, embedding_size, max_seq_length=50, loss_type='CE', n_negatives=100, lr=0.001,
                 n_epochs=10, batch_size=512, seed=42, weight_decay=0.0, lr_decay_step=0, lr_decay=1.0):
        super().__init__()
        if loss_type.upper() not in ('CE', 'BPR'):
            raise ValueError(f'unknown loss_type {loss_type!r} for a comparison model: expected CE or BPR')
        self.n_items, self.max_seq_length, self.loss_type = n_items, max_seq_length, loss_type.upper()
        self.n_negatives, self.lr, self.n_epochs, self.batch_size, self.seed = n_negatives, lr, n_epochs, batch_size, seed
        self.weight_decay, self.lr_decay_step, self.lr_decay = weight_decay, lr_decay_step, lr_decay
        self.item_embedding = nn.Embedding(n_items + 1, embedding_size, padding_idx=n_items)

    # ---- the encoder each model defines: (B, L) right-padded items, (B,) lengths -> (B, d) session vector
    def encode(self, sequences, lengths):
        raise NotImplementedError

    def item_vectors(self):
        return self.item_embedding.weight[:self.n_items]

    def scores(self, sequences, lengths):
        return self.encode(sequences, lengths) @ self.item_vectors().T

    # ---- evaluation interface: the state is [count, last max_seq_length clicks]
    def init_hidden(self, batch_size, device='cpu'):
        return [torch.zeros(batch_size, self.max_seq_length + 1, dtype=torch.long, device=device)]

    def hidden_step(self, inputs, hidden):
        state = hidden[0].clone()
        full = state[:, 0] == self.max_seq_length
        state[full, 1:-1] = state[full, 2:].clone()                   # drop the oldest click of full rows
        length = torch.clamp(state[:, 0] + 1, max=self.max_seq_length)
        state[torch.arange(len(inputs), device=inputs.device), length] = inputs
        state[:, 0] = length
        return [state]

    def score_all(self, state):
        lengths = state[:, 0]
        width = int(lengths.max())                                    # columns past every history: all padding
        sequences = state[:, 1:width + 1].clone()
        positions = torch.arange(width, device=state.device)
        sequences[positions[None, :] >= lengths[:, None]] = self.n_items
        return self.scores(sequences, lengths)

    # ---- training
    def training_examples(self, data, sessions=None):
        """(end, start) click positions of every prefix: the prefix is items[start:end], its target items[end]."""
        offsets = data.offsets
        chosen = np.arange(data.n_sessions) if sessions is None else sessions
        lengths = offsets[chosen + 1] - offsets[chosen]
        starts = np.repeat(offsets[chosen], lengths - 1)
        ends = starts + (np.arange(int((lengths - 1).sum())) - np.repeat(np.cumsum(lengths - 1) - (lengths - 1), lengths - 1)) + 1
        return ends, np.maximum(starts, ends - self.max_seq_length)

    def batch(self, items, ends, starts, device):
        """(sequences (B, longest prefix of the batch), lengths, targets); right padding past each prefix."""
        lengths = ends - starts
        index = starts[:, None] + np.arange(lengths.max())[None, :]
        valid = index < ends[:, None]
        sequences = np.where(valid, items[np.minimum(index, len(items) - 1)], self.n_items)
        return upload(sequences, device), upload(lengths, device), upload(items[ends], device)

    def loss(self, sequences, lengths, targets, generator):
        session = self.encode(sequences, lengths)
        vectors = self.item_vectors()
        if self.loss_type == 'CE':
            return F.cross_entropy(session @ vectors.T, targets)
        negatives = torch.randint(self.n_items - 1, (len(targets), self.n_negatives), generator=generator,
                                  device=targets.device)
        negatives += negatives >= targets[:, None]            # uniform over the items other than the target
        positive = (session * vectors[targets]).sum(1, keepdim=True)
        negative = torch.einsum('bd,bkd->bk', session, vectors[negatives])
        return -F.logsigmoid(positive - negative).mean()

    def epoch_schedule(self, data):
        """The sessions of each epoch (None: all of them); GRU4Rec+ adds fine-tuning epochs."""
        return [None] * self.n_epochs

    def epoch_lr(self, epoch):
        """The learning rate of epoch `epoch` (0-based): `lr` throughout unless lr_decay_step > 0; then
        lr * lr_decay ** ((epoch + 1) // lr_decay_step), the rate SR-GNN's official loop trains with: it calls
        StepLR(step_size=lr_decay_step, gamma=lr_decay).step() at the start of every epoch, before the first
        optimizer step, so (step 3, decay 0.1) epochs 0-1 run at lr, 2-4 at lr/10, 5-7 at lr/100: the first
        decay one epoch before a textbook StepLR's (torch 2.13: that loop run; torch 0.4, the code's own: its
        StepLR's base_lr * gamma ** (last_epoch // step_size), last_epoch 0 after construction, gives the same)."""
        if not self.lr_decay_step:
            return self.lr
        return self.lr * self.lr_decay ** ((epoch + 1) // self.lr_decay_step)

    def fit(self, data, **_):
        """Adam (L2 penalty `weight_decay`, rate epoch_lr) over shuffled prefix mini-batches; yields the mean
        loss of each epoch."""
        device = self.item_embedding.weight.device
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed)
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        items = data.items
        for epoch, sessions in enumerate(self.epoch_schedule(data)):
            for group in optimizer.param_groups:
                group['lr'] = self.epoch_lr(epoch)
            ends, starts = self.training_examples(data, sessions)
            order = rng.permutation(len(ends))
            self.train()
            total = torch.zeros((), dtype=torch.float64, device=device)     # read once an epoch: no GPU stall
            for lo in range(0, len(order), self.batch_size):
                rows = order[lo:lo + self.batch_size]
                loss = self.loss(*self.batch(items, ends[rows], starts[rows], device), generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach().double() * len(rows)
            self.eval()
            mean = total.item() / max(len(order), 1)
            if not math.isfinite(mean):
                raise FloatingPointError('the loss became NaN; try a lower --lr')
            yield mean


def upload(array, device):
    """A numpy array as a tensor on `device`; to a GPU through pinned memory without waiting (a plain copy
    from pageable memory waits for all the GPU's queued work first)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if torch.device(device).type != 'cuda':
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def packed_gru(gru, embedded, lengths):
    """Run a GRU over right-padded sequences; (all states (B, L, H) zero at padding, last states (B, H))."""
    packed = nn.utils.rnn.pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
    outputs, last = gru(packed)
    outputs, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, total_length=embedded.shape[1])
    return outputs, last[-1]


class NARM(SequenceModel):
    def __init__(self, n_items, embedding_size=64, hidden_size=128, n_layers=1, dropout_probs=(0.25, 0.5), **common):
        super().__init__(n_items, embedding_size, **common)
        self.embedding_dropout, self.context_dropout = nn.Dropout(dropout_probs[0]), nn.Dropout(dropout_probs[1])
        self.gru = nn.GRU(embedding_size, hidden_size, n_layers, batch_first=True, bias=False)
        self.a_1 = nn.Linear(hidden_size, hidden_size, bias=False)
        self.a_2 = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_t = nn.Linear(hidden_size, 1, bias=False)
        self.b = nn.Linear(2 * hidden_size, embedding_size, bias=False)

    def encode(self, sequences, lengths):
        states, last = packed_gru(self.gru, self.embedding_dropout(self.item_embedding(sequences)), lengths)
        mask = (sequences != self.n_items).unsqueeze(2)
        alpha = self.v_t(torch.sigmoid(self.a_1(last).unsqueeze(1) + self.a_2(states)) * mask)
        local = (alpha * states).sum(1)
        return self.b(self.context_dropout(torch.cat([local, last], 1)))


class STAMP(SequenceModel):
    def __init__(self, n_items, embedding_size=64, **common):
        super().__init__(n_items, embedding_size, **common)
        self.w1 = nn.Linear(embedding_size, embedding_size, bias=False)
        self.w2 = nn.Linear(embedding_size, embedding_size, bias=False)
        self.w3 = nn.Linear(embedding_size, embedding_size, bias=True)
        self.w0 = nn.Linear(embedding_size, 1, bias=False)
        self.mlp_a = nn.Linear(embedding_size, embedding_size)
        self.mlp_b = nn.Linear(embedding_size, embedding_size)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, 0.002)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()

    def encode(self, sequences, lengths):
        x = self.item_embedding(sequences)
        last = x[torch.arange(len(x), device=x.device), lengths - 1]
        mean = x.sum(1) / lengths[:, None].float()                   # padding rows are zero
        alpha = self.w0(torch.sigmoid(self.w1(x) + self.w2(last)[:, None] + self.w3(mean)[:, None]))
        alpha = alpha * (sequences != self.n_items).unsqueeze(2)
        attended = (alpha * x).sum(1) + mean
        return torch.tanh(self.mlp_a(attended)) * torch.tanh(self.mlp_b(last))    # h_s * h_t: trilinear with x_i


class SASRec(SequenceModel):
    def __init__(self, n_items, hidden_size=64, inner_size=256, n_layers=2, n_heads=2, hidden_dropout_prob=0.5,
                 attn_dropout_prob=0.5, hidden_act='gelu', layer_norm_eps=1e-12, initializer_range=0.02, **common):
        super().__init__(n_items, hidden_size, **common)
        self.position_embedding = nn.Embedding(self.max_seq_length, hidden_size)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout_prob)
        layer = nn.TransformerEncoderLayer(hidden_size, n_heads, inner_size, hidden_dropout_prob, activation=hidden_act,
                                           layer_norm_eps=layer_norm_eps, batch_first=True, norm_first=False)
        layer.self_attn.dropout = attn_dropout_prob
        self.layers = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, initializer_range)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, weight in self.layers.named_parameters():
            if name.endswith('in_proj_weight'):
                nn.init.normal_(weight, 0.0, initializer_range)
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()

    def encode(self, sequences, lengths):
        """Rows grouped by length (1, 2, 3-4, 5-8, ... clicks), each group cut to its own longest row: the
        causal mask makes the output at a row's last click independent of the padding after it, so the
        groups give the same vectors as one padded batch with a fraction of the work (a mini-batch of
        YOOCHOOSE 1/64 prefixes averages 5 clicks, padded to 50: an epoch 4x faster)."""
        group = torch.ceil(torch.log2(lengths.double())).long()
        order = torch.argsort(group, stable=True)
        parts = [self._encode_padded(sequences[rows, :int(lengths[rows].max())], lengths[rows])
                 for rows in order.split(torch.bincount(group).tolist()) if len(rows)]
        return torch.cat(parts).index_select(0, torch.argsort(order))

    def _encode_padded(self, sequences, lengths):
        length = sequences.shape[1]
        positions = torch.arange(length, device=sequences.device)
        x = self.dropout(self.layer_norm(self.item_embedding(sequences) + self.position_embedding(positions)))
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=x.device), 1)
        out = self.layers(x, mask=causal, is_causal=True)
        return out[torch.arange(len(out), device=out.device), lengths - 1]


def drop_clicks(sequences, lengths, p, pad):
    """Tan et al.'s input dropout: each click of a right-padded sequence is left out with probability p
    (the last one always kept); the kept clicks move to the front in their order."""
    keep = torch.rand(sequences.shape, device=sequences.device) >= p
    keep[torch.arange(len(lengths), device=lengths.device), lengths - 1] = True
    keep &= sequences != pad
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    lengths = keep.sum(1)
    width = torch.arange(sequences.shape[1], device=sequences.device)
    return torch.where(width[None, :] < lengths[:, None], sequences.gather(1, order), pad), lengths


class GRU4RecPlus(SequenceModel):
    def __init__(self, n_items, embedding_size=64, hidden_size=100, n_layers=1, dropout_prob=0.25, click_dropout=0.1,
                 finetune_epochs=2, finetune_fraction=0.5, **common):
        super().__init__(n_items, embedding_size, **common)
        self.click_dropout, self.finetune_epochs, self.finetune_fraction = click_dropout, finetune_epochs, finetune_fraction
        self.gru = nn.GRU(embedding_size, hidden_size, n_layers, batch_first=True)
        self.dropout = nn.Dropout(dropout_prob)
        self.output = nn.Linear(hidden_size, embedding_size)

    def encode(self, sequences, lengths):
        if self.training and self.click_dropout > 0:
            sequences, lengths = drop_clicks(sequences, lengths, self.click_dropout, self.n_items)
        _, last = packed_gru(self.gru, self.item_embedding(sequences), lengths)
        return self.output(self.dropout(last))

    def epoch_schedule(self, data):
        recent = np.argsort(data.start_time, kind='stable')[-max(1, int(data.n_sessions * self.finetune_fraction)):]
        return [None] * self.n_epochs + [np.sort(recent)] * self.finetune_epochs


def session_graphs(sequences, pad, dtype=torch.float32):
    """SR-GNN's session graphs (Wu et al. section 3.2) of a batch of right-padded sequences, as one edge list
    over the whole batch, without a loop over sessions. A row's nodes are its distinct items (padding is
    none); u -> v is an edge when a click on u is followed by a click on v, weight 1 however often the pair
    repeats; the official code's A = [A_in | A_out] with A_in[v, u] = edge(u -> v) / in-degree(v) and
    A_out[u, v] = edge(u -> v) / out-degree(u) (a degree 0 counted as 1). Returns
      nodes (N,)         the items of all nodes, row after row, each row's in ascending order;
      alias (B, L)       each click's node, an index into nodes (padding positions: a node of the row: mask them);
      src, dst (E,)      the nodes of every pair of consecutive positions, E = B (L - 1);
      w_in, w_out (E,)   the pair's A_in[dst, src] and A_out[src, dst] for the first pair of each distinct
                         edge, 0 for its repeats and for pairs that touch padding,
    so that A_in @ x is x[src] * w_in summed into dst, and A_out @ x is x[dst] * w_out summed into src.
    Nodes come from sorting each row (the padding id sorts last), a click's node from the sort's inverse,
    repeated edges from sorting the pairs; one host read (N).

    Why an edge list (measured on 60 YOOCHOOSE 1/64 training batches of 100, max_seq_length 50, one thread):
    a dense (B, n, n) adjacency pads every row to the batch's most distinct items (38 on average, against
    about 4 in a row), and the GNN's linear maps on those padded nodes made encode() forward + backward
    42 ms a batch against 12 ms here, a training step 70 ms against 41 ms."""
    valid = sequences != pad
    ordered, order = sequences.sort(dim=1)
    first = torch.ones_like(valid)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    first &= ordered != pad
    nodes = ordered[first]
    node_of_sorted = first.view(-1).cumsum(0).view_as(first) - 1            # numbered over the whole batch
    alias = torch.empty_like(sequences).scatter_(1, order, node_of_sorted)
    src, dst = alias[:, :-1].reshape(-1), alias[:, 1:].reshape(-1)
    n = len(nodes)
    keys, slots = torch.where(valid[:, 1:].reshape(-1), src * n + dst, n * n).sort()
    distinct = torch.ones_like(keys, dtype=torch.bool)
    distinct[1:] = keys[1:] != keys[:-1]
    distinct &= keys < n * n
    edge = torch.zeros(len(keys), dtype=dtype, device=keys.device).scatter_(0, slots, distinct.to(dtype))
    in_degree = torch.zeros(n, dtype=dtype, device=keys.device).index_add_(0, dst, edge).clamp(min=1)
    out_degree = torch.zeros(n, dtype=dtype, device=keys.device).index_add_(0, src, edge).clamp(min=1)
    return nodes, alias, src, dst, edge / in_degree[dst], edge / out_degree[src]


class SRGNN(SequenceModel):
    """SR-GNN (Wu et al., AAAI 2019), after the authors' pytorch_code (CRIPAC-DIG/SR-GNN), weights named as
    there: each prefix's session graph (session_graphs), `step` rounds of the gated GNN (section 3.3), the
    soft-attention readout over the prefix's clicks, repeats included (3.4), s_h = W3 [s_g; s_l] (`nonhybrid`:
    s_g alone), scores s_h . e_i over all items (3.5). The GNN's update is the code's h' = (1 - z) n + z h (the
    paper's eq. 5 swaps z and 1 - z). Every weight uniform(-1/sqrt(d), 1/sqrt(d)) as there; the embedding's
    padding row stays zero, and padding is no node, masked in the readout and never scored (tested).

    Training as there: every prefix of every training session, shuffled each epoch, batch 100, Adam lr 0.001
    with L2 1e-5 (`weight_decay`), lr x 0.1 by the official loop's schedule (SequenceModel.epoch_lr: epochs
    0-1 at 1e-3, 2-4 at 1e-4, 5-7 at 1e-5). The official run trains up to 30 epochs (patience 10) and reports
    its best epoch on the test set; here a fixed `n_epochs`, chosen on validation data (COMPARISON_DEFAULTS).
    Deliberately different: the history is the last max_seq_length (50) clicks where the official code keeps
    whole sessions, so the state and batch widths stay bounded (YOOCHOOSE 1/64: 1,918 of 369,859 training
    prefixes and 89 of 55,400 test predictions have a longer history, the longest 145; their graphs lose the
    oldest clicks); the official n_node (37,484 on YOOCHOOSE) also scores items that never occur in training,
    this model the training items only; the official unused linear_edge_f is left out.
    On a GPU: sorts, cumsum, scatters and index_add only, and one host read a batch (the node count).
    An epoch of YOOCHOOSE 1/64 train_full (369,859 prefixes, 3,699 batches) on one thread of a shared 2-core
    machine: 43-48 ms a batch, 160-180 s (2 threads, the other core busy: 148 ms a batch, 550 s).
    """

    def __init__(self, n_items, hidden_size=100, step=1, nonhybrid=False, **common):
        super().__init__(n_items, hidden_size, **common)
        self.step, self.nonhybrid = step, nonhybrid
        d = hidden_size
        self.w_ih = nn.Parameter(torch.empty(3 * d, 2 * d))
        self.w_hh = nn.Parameter(torch.empty(3 * d, d))
        self.b_ih, self.b_hh = nn.Parameter(torch.empty(3 * d)), nn.Parameter(torch.empty(3 * d))
        self.b_iah, self.b_oah = nn.Parameter(torch.empty(d)), nn.Parameter(torch.empty(d))
        self.linear_edge_in, self.linear_edge_out = nn.Linear(d, d), nn.Linear(d, d)
        self.linear_one, self.linear_two = nn.Linear(d, d), nn.Linear(d, d)           # W1, W2 of the attention
        self.linear_three = nn.Linear(d, 1, bias=False)                                # q
        self.linear_transform = nn.Linear(2 * d, d)                                    # W3
        for weight in self.parameters():
            nn.init.uniform_(weight, -1 / math.sqrt(d), 1 / math.sqrt(d))
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()

    def gnn_cell(self, graph, hidden):
        """One round of the gated GNN (eq. 1-5) on the nodes' states (N, d): a_in = A_in (W_in h + b_in) + b_iah,
        a_out = A_out (W_out h + b_out) + b_oah, then a GRU-style update from [a_in; a_out]."""
        src, dst, w_in, w_out = graph
        a_in = torch.zeros_like(hidden).index_add_(0, dst, self.linear_edge_in(hidden)[src] * w_in[:, None])
        a_out = torch.zeros_like(hidden).index_add_(0, src, self.linear_edge_out(hidden)[dst] * w_out[:, None])
        message = torch.cat([a_in + self.b_iah, a_out + self.b_oah], 1)
        i_r, i_i, i_n = F.linear(message, self.w_ih, self.b_ih).chunk(3, 1)
        h_r, h_i, h_n = F.linear(hidden, self.w_hh, self.b_hh).chunk(3, 1)
        reset, update = torch.sigmoid(i_r + h_r), torch.sigmoid(i_i + h_i)
        new = torch.tanh(i_n + reset * h_n)
        return new + update * (hidden - new)

    def encode(self, sequences, lengths):
        """Soft-attention readout (eq. 6-7) over the clicks' node states v_j, padding masked: s_l = v of the last
        click, alpha_j = q . sigmoid(W1 s_l + b1 + W2 v_j + b2), s_g = sum_j alpha_j v_j; W2 applied per node."""
        nodes, alias, *graph = session_graphs(sequences, self.n_items, self.w_hh.dtype)
        hidden = self.item_embedding(nodes)
        for _ in range(self.step):
            hidden = self.gnn_cell(graph, hidden)
        last = hidden[alias[torch.arange(len(alias), device=alias.device), lengths - 1]]               # s_l
        alpha = self.linear_three(torch.sigmoid(self.linear_one(last)[:, None] + self.linear_two(hidden)[alias]))
        session = (alpha * hidden[alias] * (sequences != self.n_items)[:, :, None]).sum(1)          # s_g
        return session if self.nonhybrid else self.linear_transform(torch.cat([session, last], 1))


COMPARISON_MODELS = {'NARM': NARM, 'STAMP': STAMP, 'SASRec': SASRec, 'GRU4RecPlus': GRU4RecPlus, 'SRGNN': SRGNN}
_COMMON = dict(max_seq_length=50, loss_type='CE', n_negatives=100, lr=0.001, n_epochs=10, batch_size=512, seed=42)
# Where NARM's and STAMP's defaults come from (issue #21; the README's table "Comparison models' defaults"):
# sizes, batch and dropout from the papers' experimental sections (NARM: embedding 50, hidden 100, batch 512,
# dropout 0.25 / 0.5; STAMP: embedding 100, batch 512); the learning rate and the number of epochs chosen on
# rsc15_train_tr -> rsc15_train_valid of the real RSC15 sample (never on a test file): NARM lr 0.001 / 0.003 /
# 0.01 gave R@20 0.4236 / 0.5134 / 0.6150 after 10 epochs (still rising at 0.01); STAMP lr 0.005 / 0.01 peaked
# at 0.5497 (epoch 9) / 0.5707 (epoch 5). The papers' own lr (0.001; 0.005) assume far more epochs than 2 CPU
# cores allow.
COMPARISON_DEFAULTS = {
    'NARM': dict(embedding_size=50, hidden_size=100, n_layers=1, dropout_probs=[0.25, 0.5], **dict(_COMMON, lr=0.01)),
    'STAMP': dict(embedding_size=100, **dict(_COMMON, lr=0.01, n_epochs=5)),
    'SASRec': dict(hidden_size=64, inner_size=256, n_layers=2, n_heads=2, hidden_dropout_prob=0.5,
                   attn_dropout_prob=0.5, hidden_act='gelu', layer_norm_eps=1e-12, initializer_range=0.02, **_COMMON),
    'GRU4RecPlus': dict(embedding_size=64, hidden_size=100, n_layers=1, dropout_prob=0.25, click_dropout=0.1,
                        finetune_epochs=2, finetune_fraction=0.5, **_COMMON),
    # SR-GNN: the official code's settings (SRGNN's docstring); n_epochs on yoochoose1_64_train_tr ->
    # _train_valid (srgnn_files; 1 seed): R@20 / MRR@20 after epochs 0-7 .6504/.2736 .6864/.2940 (lr 1e-3)
    # .7023/.3094 .7034/.3100 .7040/.3091 (1e-4) .7039/.3107 .7037/.3112 .7040/.3111 (1e-5); 6 epochs: the
    # fewest with both within 0.001 of the best of the eight.
    'SRGNN': dict(hidden_size=100, step=1, nonhybrid=False, **dict(_COMMON, batch_size=100, n_epochs=6,
                                                                   weight_decay=1e-5, lr_decay_step=3, lr_decay=0.1)),
}
