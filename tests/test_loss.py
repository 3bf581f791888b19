"""loss.py against slow per-element references written from spec B7 (values and gradients)."""
import math

import pytest
import torch

import loss

DOUBLE = torch.float64   # exact comparisons: every tensor here is float64


def D(rows):
    return torch.tensor(rows, dtype=DOUBLE)


def sig(v):
    return 1 / (1 + math.exp(-v))


def ref_softmax_row(row, exclude=None):
    cols = [c for c in range(len(row)) if c != exclude]
    m = max(row[c] for c in cols)
    z = sum(math.exp(row[c] - m) for c in cols)
    return [0.0 if c == exclude else math.exp(row[c] - m) / z for c in range(len(row))]


def activate(v, activation):
    """The final activations element by element."""
    if activation.startswith('elu-'):
        a = float(activation[4:])
        return v if v > 0 else a * (math.exp(v) - 1)
    if activation == 'tanh':
        return math.tanh(v)
    return v                                           # linear; the softmaxes live inside their losses


def reference(name, x, batch_size, bpreg=1.0, activation='linear'):
    """Spec B7 written out element by element in plain Python floats."""
    x = [[activate(v, activation) for v in row] for row in x]
    total = 0.0
    for a, row in enumerate(x):
        n, t = len(row), row[a]
        if name == 'cross-entropy':
            total += -math.log(ref_softmax_row(row)[a] + 1e-24)
        elif name == 'xe_logit':
            m = max(row)
            total += math.log(sum(math.exp(v - m) for v in row)) - (t - m)
        elif name == 'bpr':
            total += sum(-math.log(sig(t - v)) for v in row)
        elif name == 'top1':
            total += sum(sig(v - t) + sig(v * v) for v in row) / n - sig(t * t) / n
        elif name == 'top1-max':
            s = ref_softmax_row(row, exclude=a)
            total += sum(s[c] * (sig(row[c] - t) + sig(row[c] ** 2)) for c in range(n))
        elif name == 'bpr-max':
            s = ref_softmax_row(row, exclude=a)
            total += -math.log(sum(s[c] * sig(t - row[c]) for c in range(n)) + 1e-24)
            total += bpreg * sum(s[c] * row[c] ** 2 for c in range(n))
    return total / batch_size


def numeric_gradient(name, x, batch_size, bpreg=1.0, activation='linear', h=1e-6):
    grad = torch.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            up, down = x.clone(), x.clone()
            up[i, j] += h
            down[i, j] -= h
            grad[i, j] = (reference(name, up.tolist(), batch_size, bpreg, activation)
                          - reference(name, down.tolist(), batch_size, bpreg, activation)) / (2 * h)
    return grad


CASES = [('cross-entropy', 'softmax'), ('xe_logit', 'softmax_logit'), ('bpr', 'linear'), ('top1', 'linear'),
         ('top1-max', 'linear'), ('bpr-max', 'linear'),
         ('bpr-max', 'elu-0.5'), ('bpr-max', 'elu-1'), ('top1', 'tanh'), ('bpr', 'tanh')]    # the presets' pairings


@pytest.mark.parametrize('name,activation', CASES)
@pytest.mark.parametrize('shape', [(3, 3), (4, 9), (1, 5)])
def test_loss_and_gradient_match_the_reference(name, activation, shape):
    torch.manual_seed(sum(shape))
    x = (torch.randn(*shape, dtype=DOUBLE) * 2).requires_grad_()
    batch_size = 7
    value = loss.gru4rec_loss(x, name, activation, batch_size, bpreg=0.6)
    assert value.item() == pytest.approx(reference(name, x.tolist(), batch_size, 0.6, activation), rel=1e-9, abs=1e-12)
    value.backward()
    torch.testing.assert_close(x.grad, numeric_gradient(name, x.detach(), batch_size, 0.6, activation),
                               rtol=1e-5, atol=1e-7)


def test_edge_cases():
    # a saturated softmax: the 1e-24 epsilon keeps cross-entropy finite (about -log 1e-24 per row)
    x = D([[-200.0, 200.0], [0.0, 0.0]])
    value = loss.gru4rec_loss(x, 'CrossEntropy', 'softmax', 2)
    assert value.item() == pytest.approx((-math.log(1e-24) + math.log(2)) / 2, rel=1e-9)
    # negatives-only softmax: the target never takes part, a huge target score does not change s
    s = loss.softmax_neg(D([[50.0, 1.0, 2.0], [1.0, 50.0, 1.0]]))
    torch.testing.assert_close(s, D([[0, 1 / (1 + math.e), math.e / (1 + math.e)], [0.5, 0, 0.5]]))
    # tied scores: BPR is log 2 per column (the diagonal included); TOP1 against the reference
    x = torch.zeros(2, 4, dtype=DOUBLE)
    assert loss.gru4rec_loss(x, 'BPR', 'linear', 2).item() == pytest.approx(4 * math.log(2))
    assert loss.gru4rec_loss(x, 'TOP1', 'linear', 2).item() == pytest.approx(reference('top1', x.tolist(), 2))
    # the divisor is the configured batch size, not the number of rows
    x = torch.randn(3, 5, dtype=DOUBLE)
    assert loss.gru4rec_loss(x, 'BPR-max', 'elu-0.5', 6).item() * 2 == pytest.approx(
        loss.gru4rec_loss(x, 'BPR-max', 'elu-0.5', 3).item())


def test_activations():
    x = D([[-2.0, 0.5]])
    torch.testing.assert_close(loss.final_activation(x, 'elu-0.5'), D([[0.5 * (math.exp(-2) - 1), 0.5]]))
    torch.testing.assert_close(loss.final_activation(x, 'leaky-0.1'), D([[-0.2, 0.5]]))
    torch.testing.assert_close(loss.final_activation(x, 'selu-2-1'), D([[2 * (math.exp(-2) - 1), 1.0]]))
    torch.testing.assert_close(loss.final_activation(x, 'tanh'), torch.tanh(x))
    torch.testing.assert_close(loss.final_activation(x, 'relu'), D([[0.0, 0.5]]))


def test_bad_names_and_pairings():
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        loss.canonical_loss('hinge')
    with pytest.raises(ValueError, match="unknown final activation 'elu'"):
        loss.parse_activation('elu')
    with pytest.raises(ValueError, match="cannot be used with cross-entropy"):
        loss.check_pairing('CE', 'tanh')
    with pytest.raises(ValueError, match="cannot be used with bpr"):
        loss.check_pairing('BPR', 'softmax')
    assert [loss.canonical_loss(n) for n in ('TOP1', 'BPR', 'CE', 'CrossEntropy', 'cross-entropy', 'TOP1-max',
                                             'BPR-max', 'xe_logit')] == [
        'top1', 'bpr', 'cross-entropy', 'cross-entropy', 'cross-entropy', 'top1-max', 'bpr-max', 'xe_logit']


@pytest.mark.parametrize('rows,columns,batch_size', [(32, 2080, 32), (7, 7, 50), (5, 40, 80)])
def test_cross_entropy_value_and_grad_is_autograd_bit_for_bit(rows, columns, batch_size):
    torch.manual_seed(rows)
    x = (torch.randn(rows, columns) * 6).requires_grad_()
    with torch.no_grad():
        x[0, 0] = -60.0                                   # a target with p ~ 1e-30: EPS matters there
    value = loss.cross_entropy(x, batch_size)
    value.backward()
    fast_value, grad = loss.cross_entropy_value_and_grad(x.detach(), batch_size)
    assert torch.equal(fast_value, value.detach()) and torch.equal(grad, x.grad)


@pytest.mark.parametrize('activation', ['linear', 'elu-0.5', 'elu-1'])
@pytest.mark.parametrize('bpreg', [0.0, 1.95])
@pytest.mark.parametrize('rows,columns', [(3, 3), (4, 9), (1, 5)])
def test_bpr_max_value_and_grad_matches_the_reference(activation, bpreg, rows, columns):
    """The fast step's written-out BPR-max gradient (issue #17) against spec B7 element by element (value)
    and its numeric gradient, in float64."""
    torch.manual_seed(rows * columns)
    x = torch.randn(rows, columns, dtype=DOUBLE) * 2
    value, grad = loss.loss_function('bpr-max', activation, 7, bpreg).value_and_grad(x.clone())
    assert value.item() == pytest.approx(reference('bpr-max', x.tolist(), 7, bpreg, activation), rel=1e-12)
    torch.testing.assert_close(grad, numeric_gradient('bpr-max', x, 7, bpreg, activation), rtol=1e-5, atol=1e-7)


def test_bpr_max_value_and_grad_agrees_with_autograd_at_training_size():
    """float32 at a paramfile's size with a target far above and one far below its negatives: the same
    loss and gradient as autograd through bpr_max up to float rounding."""
    torch.manual_seed(3)
    x = torch.randn(80, 2128) * 3
    x[0, 0], x[1, 1] = 30.0, -30.0
    function = loss.loss_function('bpr-max', 'elu-0.5', 80, 1.95)
    value, grad = function.value_and_grad(x.clone())
    reference_value, reference_grad = loss.ScoreLoss(function.function).value_and_grad(x.clone())
    assert value.item() == pytest.approx(reference_value.item(), rel=1e-6)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-4, atol=1e-6 * reference_grad.abs().max().item())
