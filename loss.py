"""GRU4Rec losses and final activations (spec B7; TH "LOSS FUNCTIONS", PT `xe_loss_with_softmax`,
`bpr_max_loss_with_elu`, `softmax_neg`).

Every loss takes the training score matrix R (M x (M+K): row a = an active slot, column c = candidate c;
the positive of row a is column a, followed by the other slots' targets and the K shared samples) and
the configured batch size B. It is a SUM over the M rows divided by B (not by M), as in the official
code. The final activation is applied first (`final_activation`), and each loss accepts only the
activations it is paired with (`check_pairing`, spec B7.8).

Deliberate choice: TOP1 is the clean formula of spec B7.4 (summed over rows / B); the accidental
broadcast of the Theano HEAD that multiplies it by M (a scale only) is not copied.
"""
import torch
import torch.nn.functional as F

EPS = 1e-24

LOSS_ALIASES = {'cross-entropy': 'cross-entropy', 'crossentropy': 'cross-entropy', 'ce': 'cross-entropy',
                'xe': 'cross-entropy', 'xe_logit': 'xe_logit', 'top1': 'top1', 'bpr': 'bpr',
                'top1-max': 'top1-max', 'bpr-max': 'bpr-max'}
# the final activations each loss may be used with (spec B7.8); the first is the default
PAIRING = {'cross-entropy': ('softmax',), 'xe_logit': ('softmax_logit',),
           'top1': ('tanh', 'linear'), 'bpr': ('tanh', 'linear'),
           'top1-max': ('linear', 'elu', 'relu', 'tanh', 'leaky', 'selu'),
           'bpr-max': ('elu', 'linear', 'relu', 'tanh', 'leaky', 'selu')}


def canonical_loss(name):
    key = name.strip().lower()
    if key not in LOSS_ALIASES:
        raise ValueError(f'unknown loss {name!r}: expected one of TOP1, BPR, CE, CrossEntropy, cross-entropy, '
                         f'TOP1-max, BPR-max, xe_logit')
    return LOSS_ALIASES[key]


def parse_activation(name):
    """'elu-0.5' -> ('elu', (0.5,)); 'selu-1.05-1.67' -> ('selu', (1.05, 1.67)); 'tanh' -> ('tanh', ())."""
    kind, *params = name.strip().lower().split('-')
    expected = {'linear': 0, 'tanh': 0, 'relu': 0, 'softmax': 0, 'softmax_logit': 0, 'elu': 1, 'leaky': 1,
                'selu': 2}
    try:
        values = tuple(float(p) for p in params)
    except ValueError:
        values = None
    if kind not in expected or values is None or len(values) != expected[kind]:
        raise ValueError(f'unknown final activation {name!r}: expected linear, tanh, relu, softmax, '
                         f'softmax_logit, elu-<a>, leaky-<a> or selu-<a>-<b>')
    return kind, values


def check_pairing(loss, activation):
    """Raise ValueError for a loss/activation combination the official code does not allow."""
    loss = canonical_loss(loss)
    kind, _ = parse_activation(activation)
    if kind not in PAIRING[loss]:
        raise ValueError(f'final activation {activation!r} cannot be used with {loss}: '
                         f'use {" or ".join(PAIRING[loss])}')
    return loss, activation


def final_activation(scores, activation):
    kind, p = parse_activation(activation)
    if kind in ('linear', 'softmax', 'softmax_logit'):   # the two softmaxes live inside their losses
        return scores
    if kind == 'tanh':
        return torch.tanh(scores)
    if kind == 'relu':
        return torch.relu(scores)
    if kind == 'elu':
        return F.elu(scores, alpha=p[0])
    if kind == 'leaky':
        return F.leaky_relu(scores, negative_slope=p[0])
    return p[0] * F.elu(scores, alpha=p[1])              # selu-<scale>-<alpha>


def softmax_neg(x):
    """Softmax over each row's negatives: the diagonal (the target) is excluded and gets 0 (spec B7.5)."""
    diagonal = torch.eye(x.shape[0], x.shape[1], dtype=torch.bool, device=x.device)
    x = x.masked_fill(diagonal, float('-inf'))
    return torch.softmax(x, dim=1)


def cross_entropy(x, batch_size):
    return -torch.log(torch.softmax(x, dim=1).diagonal() + EPS).sum() / batch_size


def xe_logit(x, batch_size):
    return -torch.log_softmax(x, dim=1).diagonal().sum() / batch_size


def bpr(x, batch_size):
    return -F.logsigmoid(x.diagonal()[:, None] - x).sum() / batch_size


def top1(x, batch_size):
    n = x.shape[1]
    target = x.diagonal()
    per_row = (torch.sigmoid(x - target[:, None]) + torch.sigmoid(x ** 2)).sum(dim=1) / n
    return (per_row - torch.sigmoid(target ** 2) / n).sum() / batch_size


def top1_max(x, batch_size):
    s = softmax_neg(x)
    target = x.diagonal()[:, None]
    return (s * (torch.sigmoid(x - target) + torch.sigmoid(x ** 2))).sum() / batch_size


def bpr_max(x, batch_size, bpreg=1.0):
    s = softmax_neg(x)
    target = x.diagonal()[:, None]
    ranking = -torch.log((s * torch.sigmoid(target - x)).sum(dim=1) + EPS)
    return (ranking + bpreg * (s * x ** 2).sum(dim=1)).sum() / batch_size


def cross_entropy_value_and_grad(x, batch_size):
    """cross_entropy(x) and its gradient d loss / d x with the arithmetic autograd uses for it (log's
    backward divides, then softmax's backward (g - sum(g * p)) * p of a g that is zero off the
    diagonal), so the same bits, in place on the softmax and at about a third of autograd's time."""
    p = torch.softmax(x, dim=1)
    diagonal = p.diagonal()
    target = diagonal + EPS
    loss = -torch.log(target).sum() / batch_size
    g = -(torch.ones((), dtype=x.dtype, device=x.device) / batch_size) / target     # d loss / d p_aa
    s = g * diagonal                               # sum over the row of g * p: one non-zero term
    on_diagonal = (g - s) * diagonal
    grad = p.mul_(-s[:, None])                     # (0 - s) * p off the diagonal
    grad.diagonal().copy_(on_diagonal)
    return loss, grad


class ScoreLoss:
    """A configured loss of the (M, C) score matrix: `loss(scores)` (autograd differentiates it) and
    `loss.value_and_grad(scores)` = (loss, d loss / d scores) for the fast training step: by an explicit
    formula where one is written (cross-entropy), else by autograd on the scores alone."""

    def __init__(self, function, explicit=None):
        self.function, self.explicit = function, explicit

    def __call__(self, scores):
        return self.function(scores)

    def value_and_grad(self, scores):
        if self.explicit is not None:
            return self.explicit(scores)
        with torch.inference_mode(False), torch.enable_grad():    # callable from train_step's inference mode
            scores = scores.clone().requires_grad_()
            loss = self.function(scores)
            grad, = torch.autograd.grad(loss, scores)
        return loss.detach(), grad


def gru4rec_loss(scores, loss, activation, batch_size, bpreg=1.0):
    """Apply the final activation to the score matrix and compute the loss (divided by batch_size)."""
    return loss_function(loss, activation, batch_size, bpreg)(scores)


def loss_function(loss, activation, batch_size, bpreg=1.0):
    """gru4rec_loss with the names checked once: a ScoreLoss, for the training loop."""
    loss, activation = check_pairing(loss, activation)
    if loss == 'bpr-max':
        return ScoreLoss(lambda scores: bpr_max(final_activation(scores, activation), batch_size, bpreg))
    if loss == 'cross-entropy':       # softmax is its only activation, applied inside
        return ScoreLoss(lambda scores: cross_entropy(scores, batch_size),
                         lambda scores: cross_entropy_value_and_grad(scores, batch_size))
    function = {'xe_logit': xe_logit, 'bpr': bpr, 'top1': top1, 'top1-max': top1_max}[loss]
    return ScoreLoss(lambda scores: function(final_activation(scores, activation), batch_size))
