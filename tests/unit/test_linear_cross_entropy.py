"""The chunked LM head + cross-entropy (`linear_cross_entropy`) gives the loss and gradients of the plain path
(the head's Linear, fp32 logits, F.cross_entropy), for every chunking, with a bias and a soft cap, under bf16
autocast, and for a tied head whose weight also trains through the embedding lookup."""

import pytest
import torch
import torch.nn.functional as F

from tunesmith.data.batching import collate
from tunesmith.train.loss import TrainedTokenLoss, final_hidden_states, linear_cross_entropy
from tunesmith.records import IGNORE_INDEX


def plain(hidden, weight, bias, targets, softcap):
    logits = F.linear(hidden, weight, bias).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def loss_and_grads(fn, inputs, scale=0.37):
    leaves = [t for t in inputs if t is not None]
    loss = fn()
    return loss.detach(), torch.autograd.grad(loss * scale, leaves)  # a scaled loss: backward must use its gradient


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("softcap", [None, 4.0])
@pytest.mark.parametrize("with_bias", [False, True])
def test_same_loss_and_gradients_as_the_plain_path(chunk, softcap, with_bias):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(150, 24, generator=g, requires_grad=True)
    weight = (torch.randn(90, 24, generator=g) * 0.5).requires_grad_()
    bias = torch.randn(90, generator=g, requires_grad=True) if with_bias else None
    targets = torch.randint(0, 90, (150,), generator=g)
    want, want_grads = loss_and_grads(lambda: plain(hidden, weight, bias, targets, softcap), [hidden, weight, bias])
    got, got_grads = loss_and_grads(lambda: linear_cross_entropy(hidden, weight, bias, targets, softcap, chunk),
                                    [hidden, weight, bias])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    for a, b in zip(got_grads, want_grads):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_under_bf16_autocast_as_the_head_would_run():
    """The matmuls in bf16 as autocast runs the head's Linear, the softmax in fp32: the same loss within bf16
    rounding, gradients in the inputs' dtypes (fp32 hidden states, a trainable fp32 weight), and gradients as close
    to the exact ones (fp32 arithmetic on the bf16-rounded inputs) as the plain path's. The two differ from each
    other by a bf16 rounding: the plain path rounds the weight's gradient once, the chunked one per chunk."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(300, 64, generator=g, requires_grad=True)
    weight = (torch.randn(500, 64, generator=g) * 0.1).requires_grad_()
    targets = torch.randint(0, 500, (300,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, want_grads = loss_and_grads(lambda: plain(hidden, weight, None, targets, None), [hidden, weight])
        got, got_grads = loss_and_grads(lambda: linear_cross_entropy(hidden, weight, None, targets, chunk=64),
                                        [hidden, weight])
    rounded = [t.detach().bfloat16().float().requires_grad_() for t in (hidden, weight)]
    exact, exact_grads = loss_and_grads(lambda: plain(*rounded[:1], rounded[1], None, targets, None), rounded)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(got, exact, rtol=1e-4, atol=1e-2)
    for ours, theirs, truth in zip(got_grads, want_grads, exact_grads):
        assert ours.dtype == theirs.dtype == torch.float32
        error = float((ours - truth).norm() / truth.norm())
        assert error < 1e-2 and error <= 1.25 * float((theirs - truth).norm() / truth.norm())
    # and the bf16 matmuls are really what ran: fp32 matmuls on the unrounded inputs give a visibly different loss
    assert abs(float(got) - float(plain(hidden, weight, None, targets, None))) > 1e-4


def matmuls_in(fn) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm)
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def test_no_gradients_are_computed_without_autograd():
    """Under no_grad or inference_mode (a validation loss) only the logits' matmul runs, even for a weight that
    requires grad (full fine-tuning), whose gradient would otherwise cost a vocabulary x hidden fp32 buffer."""
    hidden, targets = torch.randn(10, 8, requires_grad=True), torch.randint(0, 30, (10,))
    weight = torch.randn(30, 8, requires_grad=True)
    assert matmuls_in(lambda: linear_cross_entropy(hidden, weight, None, targets, chunk=4)) == 3 * 3  # 3 chunks
    with torch.no_grad():
        assert matmuls_in(lambda: linear_cross_entropy(hidden, weight, None, targets, chunk=4)) == 3
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            loss = linear_cross_entropy(hidden, weight, None, targets)
        assert loss.grad_fn is None
        torch.testing.assert_close(loss, plain(hidden, weight, None, targets, None).detach())


def examples_batch(model, make_examples):
    model.config.use_cache = False
    examples = make_examples(6, model.config.vocab_size, seed=5, lo=5, hi=40)
    return collate(examples, [[0, 1, 2], [3, 4, 5]], pad_id=2, pack=True)


def test_trained_token_loss_matches_logits_then_cross_entropy_on_a_tied_model(tiny_model, make_examples):
    """Full fine-tuning of a model whose head is its input embedding: the weight's gradient gathers the lookup's and
    the head's parts, as with the plain path."""
    assert tiny_model.get_output_embeddings().weight is tiny_model.get_input_embeddings().weight
    batch = examples_batch(tiny_model, make_examples)
    loss_module = TrainedTokenLoss(tiny_model)
    trained = batch.targets != IGNORE_INDEX

    def plain_loss():
        return F.cross_entropy(loss_module.logits(batch), batch.targets[trained], reduction="sum")

    params = [p for p in tiny_model.parameters()]
    want, want_grads = loss_and_grads(plain_loss, params)
    (got, n), got_grads = loss_module(batch), None
    got_grads = torch.autograd.grad(got * 0.37, params)
    assert n == int(trained.sum())
    torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-4)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)  # fp32 sums in another order


def test_a_wrapped_head_goes_through_its_own_forward(tiny_model, make_examples):
    """A head that is not a plain Linear (LoRA on the head, a quantized head) keeps its own forward: here a
    subclass whose forward doubles the logits, which the chunked path would not know about."""

    class Doubled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    batch = examples_batch(tiny_model, make_examples)
    head = tiny_model.get_output_embeddings()
    doubled = Doubled(head.in_features, head.out_features, bias=False)
    doubled.weight = head.weight
    tiny_model.set_output_embeddings(doubled)
    trained = batch.targets != IGNORE_INDEX
    with torch.no_grad():
        hidden = final_hidden_states(tiny_model, batch)[trained]
        want = F.cross_entropy(2 * F.linear(hidden, head.weight).float(), batch.targets[trained], reduction="sum")
        got, _ = TrainedTokenLoss(tiny_model)(batch)
    torch.testing.assert_close(got, want)


def test_gradients_are_scaled_in_place_once_and_a_second_backward_is_a_clear_error():
    """backward scales the gradients computed in the forward in place (no copy of a vocabulary x hidden buffer at
    the memory peak); a second backward through the same graph would scale them twice, so it is refused."""
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    targets = torch.randint(0, 30, (10,))
    loss = linear_cross_entropy(hidden, weight, None, targets, chunk=4)
    (0.5 * loss).backward(retain_graph=True)
    want = torch.autograd.grad(0.5 * plain(hidden, weight, None, targets, None), [hidden, weight])
    torch.testing.assert_close(hidden.grad, want[0])
    torch.testing.assert_close(weight.grad, want[1])
    with pytest.raises(RuntimeError, match="compute the loss again"):
        loss.backward()
