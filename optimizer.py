"""Optimisers: the official Adagrad with heavy-ball momentum (spec B9) and torch's own, by name.

The official rule (PT `IndexedAdagradM`, TH `adagrad` + momentum), per parameter with gradient g,
accumulator G and velocity v (both start at 0), learning rate lr, momentum mu, eps = 1e-6:

    G <- G + g^2;   step = -lr * g / sqrt(G + eps)     (eps INSIDE the square root)
    mu > 0:  v <- mu * v + step;  theta <- theta + v        mu = 0:  theta <- theta + step

For a row-sparse gradient (the item tables, looked up with sparse gradients) duplicate rows are summed
first and only the touched rows of G, v and theta change; untouched rows' velocity does not decay
(spec B9.2, as PT). torch.optim.Adagrad is not this rule (eps outside the root, no momentum).
"""
import torch

OPTIMIZERS = ('AdagradM', 'Adagrad', 'Adam', 'SGD', 'RMSprop')
SPARSE_OK = ('AdagradM', 'Adagrad')        # the others get dense gradients from the model


class AdagradM(torch.optim.Optimizer):
    """The official GRU4Rec optimiser; dense and row-sparse (torch sparse COO) gradients."""

    def __init__(self, params, lr=0.1, momentum=0.0, eps=1e-6):
        if lr <= 0 or not 0.0 <= momentum < 1.0:
            raise ValueError(f'AdagradM needs lr > 0 and 0 <= momentum < 1, got lr={lr}, momentum={momentum}')
        super().__init__(params, dict(lr=lr, momentum=momentum, eps=eps))

    def step(self, closure=None):
        self.update()

    @torch.inference_mode()
    def update(self):
        """`step` without the hook and profiling wrapper torch.optim puts around every `step` (about
        60 us a call, 3% of a GRU4Rec training step on CPU); the training loop calls this. In inference
        mode: no autograd bookkeeping for the in-place updates (another 3%). The dense parameters of a
        group (the GRU weights and biases) are updated together by torch's multi-tensor (`_foreach`)
        operations: the same arithmetic per element, a fifth of the operator calls (issue #17)."""
        for group in self.param_groups:
            lr, mu, eps = group['lr'], group['momentum'], group['eps']
            dense = []
            for p in group['params']:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state['acc'] = torch.zeros_like(p)
                    state['velocity'] = torch.zeros_like(p)
                if p.grad.is_sparse:
                    self._sparse_step(p, state, lr, mu, eps)
                else:
                    dense.append(p)
            if dense:
                self._dense_step(dense, [p.grad for p in dense], [self.state[p] for p in dense], lr, mu, eps)

    @staticmethod
    def _dense_step(params, grads, states, lr, mu, eps):
        """The rule of spec B9 for dense gradients, as `_rule` computes it, over all tensors at once; with
        mu = 0 the parameter moves by one addcdiv, as in the official code."""
        accs = [state['acc'] for state in states]
        torch._foreach_addcmul_(accs, grads, grads)
        denominators = torch._foreach_add(accs, eps)
        torch._foreach_sqrt_(denominators)
        if mu > 0:
            velocities = [state['velocity'] for state in states]
            torch._foreach_mul_(velocities, mu)
            torch._foreach_addcdiv_(velocities, grads, denominators, value=-lr)
            torch._foreach_add_(params, velocities)
        else:
            torch._foreach_addcdiv_(params, grads, denominators, value=-lr)

    @staticmethod
    def _rule(acc, velocity, g, lr, mu, eps):
        """The update of spec B9 for gradient g, in place on `acc` and `velocity` (both shaped as g);
        returns the change of the parameter: -lr * g / sqrt(G + eps), or the new velocity when mu > 0."""
        denominator = acc.addcmul_(g, g).add(eps).sqrt_()
        if mu > 0:
            return velocity.mul_(mu).addcdiv_(g, denominator, value=-lr)
        return torch.mul(g, -lr).div_(denominator)

    @staticmethod
    def _sparse_step(p, state, lr, mu, eps):
        """Only the rows present in the (coalesced) sparse gradient are read and written."""
        grad = p.grad.coalesce()
        rows, g = grad.indices()[0], grad.values()
        acc = state['acc'].index_select(0, rows)
        velocity = state['velocity'].index_select(0, rows) if mu > 0 else None
        step = AdagradM._rule(acc, velocity, g, lr, mu, eps)
        state['acc'].index_copy_(0, rows, acc)
        if mu > 0:
            state['velocity'].index_copy_(0, rows, velocity)
        p.index_add_(0, rows, step)


def make_optimizer(name, params, lr, momentum=0.0):
    """--optimizer_type: AdagradM (official, the default) or one of torch's Adagrad, Adam, SGD, RMSprop."""
    if name == 'AdagradM':
        return AdagradM(params, lr=lr, momentum=momentum)
    if name == 'Adagrad':
        return torch.optim.Adagrad(params, lr=lr)
    if name == 'Adam':
        return torch.optim.Adam(params, lr=lr)
    if name == 'SGD':
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == 'RMSprop':
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum)
    raise ValueError(f'unknown optimizer {name!r}: expected one of {", ".join(OPTIMIZERS)}')
