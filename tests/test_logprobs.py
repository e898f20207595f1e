"""The log-prob paths agree with a naive full log-softmax, in value and gradient, and stay lean."""

from __future__ import annotations

import pytest
import torch
from conftest import batch_inputs, naive_completion_logps
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from tisdpo.data.collate import PreferenceCollator
from tisdpo.logprobs import ChunkedLinearLogProb, completion_logps

FEATURES = [
    {
        "index": 0,
        "prompt_input_ids": [0, 5, 6, 7],
        "chosen_input_ids": [8, 9, 1],
        "rejected_input_ids": [10, 1],
    },
    {
        "index": 1,
        "prompt_input_ids": [0, 11],
        "chosen_input_ids": [12, 13, 14, 15, 1],
        "rejected_input_ids": [16, 17, 1],
    },
]


def naive_logps(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return naive_completion_logps(logits, batch)


@pytest.fixture
def model_and_batch(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return model, PreferenceCollator(pad_token_id=2)(FEATURES)


@pytest.mark.parametrize("path", ["chunked", "logits"])
def test_paths_match_naive_values_and_gradients(model_and_batch, path):
    model, batch = model_and_batch
    expected = naive_logps(model, batch)
    (expected * torch.arange(1, expected.numel() + 1).view_as(expected)).sum().backward()
    naive_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = completion_logps(model, *batch_inputs(batch), path=path, chunk_size=3)
    torch.testing.assert_close(out.logps, expected, rtol=1e-5, atol=1e-5)
    (out.logps * torch.arange(1, expected.numel() + 1).view_as(expected)).sum().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, naive_grads[name], rtol=1e-4, atol=1e-5)


def test_padding_positions_are_zero(model_and_batch):
    model, batch = model_and_batch
    out = completion_logps(model, *batch_inputs(batch))
    assert torch.all(out.logps[~batch["completion_mask"]] == 0)
    assert torch.all(out.logps[batch["completion_mask"]] < 0)


def test_chunked_function_gradcheck():
    torch.manual_seed(0)
    hidden = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 6, 2, 2])

    def logps_only(h, w):
        return ChunkedLinearLogProb.apply(h, w, labels, 2)[0].double()

    # fp32 inside the function, so compare against the float64 reference with a loose tolerance
    reference = torch.log_softmax(hidden @ weight.t(), -1).gather(-1, labels[:, None]).squeeze(-1)
    torch.testing.assert_close(logps_only(hidden, weight), reference, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(logps_only(hidden, weight).sum(), (hidden, weight))
    ref_grads = torch.autograd.grad(reference.sum(), (hidden, weight))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operator produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def test_chunked_path_never_allocates_batch_by_length_by_vocab():
    """Forward and backward on a long batch with a large vocabulary: no B x T x V (or T x V) tensor."""
    vocab, length, rows, chunk = 8000, 384, 2, 64
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    model = LlamaForCausalLM(config)
    features = [
        {
            "index": i,
            "prompt_input_ids": [0] * 8,
            "chosen_input_ids": list(range(3, 3 + length)),
            "rejected_input_ids": list(range(5, 5 + length)),
        }
        for i in range(rows // 2)
    ]
    batch = PreferenceCollator(pad_token_id=2)(features)
    recorder = LargestTensor()
    with recorder:
        out = completion_logps(model, *batch_inputs(batch), chunk_size=chunk)
        out.logps.sum().backward()
    assert recorder.largest < length * vocab / 2  # far below a single row's T x V logits
    assert recorder.largest <= max(chunk * vocab, vocab * 16)  # one chunk of logits, or the LM head weight

    recorder = LargestTensor()
    with recorder:
        completion_logps(model, *batch_inputs(batch), path="logits")
    assert recorder.largest >= rows * length * vocab  # the plain path does materialise the logits


def test_head_as_identity_puts_back_a_forward_set_on_the_instance(model_and_batch):
    """accelerate's device hooks replace a module's forward on the instance; it must survive the chunked path."""
    model, batch = model_and_batch
    head = model.get_output_embeddings()
    calls = []

    def hooked_forward(hidden_states):
        calls.append(1)
        return torch.nn.Linear.forward(head, hidden_states)

    head.forward = hooked_forward
    completion_logps(model, *batch_inputs(batch))
    assert head.forward is hooked_forward
    calls.clear()
    model(input_ids=batch["input_ids"])
    assert calls == [1]
