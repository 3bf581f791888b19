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


def bpr_max_value_and_grad(x, batch_size, bpreg=1.0, alpha=None):
    """bpr_max(elu(x, alpha)) (alpha None: of x itself) and its gradient d loss / d x, written out (issue
    #17): about half the passes over the (M, C) matrix that autograd makes. Per row a, with y the
    activated scores, s the softmax over the row's negatives (s_a = 0), sigma_j = sigmoid(y_a - y_j),
    P = sum_j s_j sigma_j, Q = sum_j s_j sigma_j^2, R = sum_j s_j y_j^2 and lambda = bpreg:

        loss_a = -log(P + EPS) + lambda R
        d loss_a / d y_j = s_j ((P - sigma_j^2) / (P + EPS) + lambda (y_j^2 + 2 y_j - R))   (j != a)
        d loss_a / d y_a = -(P - Q) / (P + EPS)

    then through the ELU's derivative (1 where y > 0, y + alpha elsewhere), all divided by batch_size.
    The same function as bpr_max up to float rounding (tests/test_loss.py), not autograd's bits."""
    y = x if alpha is None else F.elu(x, alpha)
    target = y.diagonal().clone()
    y.diagonal().fill_(float('-inf'))               # the softmax over the negatives only
    s = torch.softmax(y, dim=1)
    y.diagonal().copy_(target)
    sigma2 = torch.sub(target[:, None], y).sigmoid_()
    p = torch.linalg.vecdot(s, sigma2)
    sigma2.mul_(sigma2)
    q = torch.linalg.vecdot(s, sigma2)
    denominator = p + EPS
    c = 1.0 / batch_size
    loss = -torch.log(denominator).sum()
    grad = torch.addcmul((p / denominator * c)[:, None], sigma2, (-c / denominator)[:, None])
    if bpreg:
        square = y * y
        r = torch.linalg.vecdot(s, square)
        loss = loss + bpreg * r.sum()
        grad.sub_((bpreg * c) * r[:, None]).add_(square.add_(y, alpha=2), alpha=bpreg * c)
    grad.mul_(s)
    grad.diagonal().copy_((q - p) * c / denominator)
    if alpha is not None:
        grad = torch.ops.aten.elu_backward(grad, alpha, 1, 1, True, y)
    return loss / batch_size, grad


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
        kind, values = parse_activation(activation)
        explicit = None if kind not in ('elu', 'linear') else lambda scores: bpr_max_value_and_grad(
            scores, batch_size, bpreg, values[0] if kind == 'elu' else None)
        return ScoreLoss(lambda scores: bpr_max(final_activation(scores, activation), batch_size, bpreg), explicit)
    if loss == 'cross-entropy':       # softmax is its only activation, applied inside
        return ScoreLoss(lambda scores: cross_entropy(scores, batch_size),
                         lambda scores: cross_entropy_value_and_grad(scores, batch_size))
    function = {'xe_logit': xe_logit, 'bpr': bpr, 'top1': top1, 'top1-max': top1_max}[loss]
    return ScoreLoss(lambda scores: function(final_activation(scores, activation), batch_size))
