"""MaskedMultiheadAttention against torch's nn.MultiheadAttention on the masked weights."""
import copy
import itertools

import pytest
import torch
from torch import nn
import torch.nn.functional as F

import maskops
from maskops import reference
from maskops.attention import MaskedMultiheadAttention
from maskops.nn import owner_name

E, H, B, L, S = 8, 2, 3, 4, 5


def _layers(seed=0, **kwargs):
    """(torch layer, its converted deep copy)."""
    torch.manual_seed(seed)
    plain = nn.MultiheadAttention(E, H, **kwargs)
    with torch.no_grad():  # torch starts biases at 0: make them count
        for name, p in plain.named_parameters():
            if "bias" in name:
                p.normal_()
    return plain, maskops.convert(copy.deepcopy(plain))


def _inputs(layer, kind, g, batched=True):
    first = (B, L) if layer.batch_first else (L, B)
    other = (B, S) if layer.batch_first else (S, B)
    if not batched:
        first, other = (L,), (S,)
    q = torch.randn(*first, E, generator=g)
    if kind == "self":
        return q, q, q
    k = torch.randn(*other, layer.kdim, generator=g)
    v = k if kind == "shared_kv" and layer.kdim == layer.vdim else torch.randn(*other, layer.vdim, generator=g)
    return q, k, v


def _masks(kind, g, batched=True, src=S):
    """(key_padding_mask, attn_mask, is_causal) of a mask kind, for `src` keys."""
    if kind == "none":
        return None, None, False
    padding = torch.rand(B if batched else 1, src, generator=g) < 0.3
    padding[:, 0] = False  # every query sees a key: no all -inf rows
    if not batched:
        padding = padding[0]
    if kind == "padding_bool":
        return padding, None, False
    if kind == "padding_float":
        return torch.zeros(padding.shape).masked_fill(padding, -1e4), None, False
    if kind == "attn_2d_bool":
        mask = torch.rand(L, src, generator=g) < 0.3
        mask[:, 0] = False
        return None, mask, False
    if kind == "attn_3d_float":
        return None, torch.randn((B if batched else 1) * H, L, src, generator=g), False
    if kind == "causal":  # square: self-attention only
        return None, nn.Transformer.generate_square_subsequent_mask(L), True
    raise ValueError(kind)


LAYOUTS = [dict(batch_first=True), dict(batch_first=False), dict(kdim=6, vdim=5),
           dict(bias=False, add_bias_kv=True, add_zero_attn=True, batch_first=True)]


# A causal mask is square (self-attention only); kdim != embed_dim rules self-attention out.
CASES = [(layout, inputs, masks) for layout, inputs, masks in itertools.product(
    LAYOUTS, ["self", "shared_kv", "cross"],
    ["none", "padding_bool", "padding_float", "attn_2d_bool", "attn_3d_float", "causal"])
    if (masks != "causal" or inputs == "self") and not ("kdim" in layout and inputs == "self")]


@pytest.mark.parametrize("layout, inputs, masks", CASES, ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}={x}" for k, x in v.items()))
def test_converted_layer_computes_what_torch_computes(layout, inputs, masks):
    plain, masked = _layers(**layout)
    g = torch.Generator().manual_seed(1)
    q, k, v = _inputs(plain, inputs, g)
    padding, attn, causal = _masks(masks, g, src=k.shape[1 if plain.batch_first else 0])
    for need_weights, average in [(True, True), (True, False), (False, True)]:
        kwargs = dict(key_padding_mask=padding, need_weights=need_weights, attn_mask=attn,
                      average_attn_weights=average, is_causal=causal)
        expected, expected_weights = plain(q, k, v, **kwargs)
        with maskops.use_backend("cpu"):
            out, weights = masked(q, k, v, **kwargs)
        torch.testing.assert_close(out, expected)
        if need_weights:
            torch.testing.assert_close(weights, expected_weights)
        else:
            assert weights is None


def test_unbatched_input():
    plain, masked = _layers()
    g = torch.Generator().manual_seed(2)
    q, k, v = _inputs(plain, "cross", g, batched=False)
    padding, _, _ = _masks("padding_bool", g, batched=False)
    expected = plain(q, k, v, key_padding_mask=padding)
    out = masked(q, k, v, key_padding_mask=padding)
    for a, b in zip(out, expected):
        torch.testing.assert_close(a, b)


def _plain_for_task(masked, task):
    """torch's layer holding weight * visible(owner, task) for every masked weight."""
    plain = nn.MultiheadAttention(E, H, kdim=masked.kdim, vdim=masked.vdim, batch_first=masked.batch_first,
                                  bias=masked.in_proj_bias is not None)
    state = {k: v for k, v in masked.state_dict().items() if "owner" not in k}
    for name in masked.masked_weights():
        state[name] = state[name] * reference.visible(getattr(masked, owner_name(name)), task)
    state["out_proj.weight"] = state["out_proj.weight"] * reference.visible(masked.out_proj.owner, task)
    plain.load_state_dict(state)
    return plain


def _random_owners(masked, g, tasks=3):
    with torch.no_grad():
        for name, owner in masked.named_buffers():
            owner.copy_(torch.randint(0, tasks + 1, owner.shape, generator=g))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("layout", LAYOUTS[:3], ids=["batch_first", "seq_first", "kdim_vdim"])
def test_each_task_sees_its_weights_and_trains_only_them(backend, layout):
    _, masked = _layers(seed=3, **layout)
    g = torch.Generator().manual_seed(4)
    _random_owners(masked, g)
    q, k, v = _inputs(masked, "cross", g)
    for task in (1, 2, 3):
        masked.task = task
        plain = _plain_for_task(masked, task)
        with maskops.use_backend(backend):
            out, _ = masked(q, k, v, need_weights=False)
        expected, _ = plain(q, k, v, need_weights=False)
        torch.testing.assert_close(out, expected)
        upstream = torch.randn(out.shape, generator=g)
        masked.zero_grad()
        out.backward(upstream)
        expected.backward(upstream)
        for name in masked.masked_weights():
            grad = getattr(masked, name).grad
            trainable = reference.trainable(getattr(masked, owner_name(name)), task)
            assert torch.all(grad[~trainable] == 0)  # frozen and pruned: exactly zero
            torch.testing.assert_close(grad[trainable], getattr(plain, name).grad[trainable])


@pytest.mark.parametrize("batch_first", [True, False])
def test_per_sample_tasks_match_single_task_calls(batch_first):
    _, masked = _layers(seed=5, batch_first=batch_first)
    g = torch.Generator().manual_seed(6)
    _random_owners(masked, g)
    q, _, _ = _inputs(masked, "self", g)
    tasks = torch.tensor([2, 1, 3])
    maskops.set_task(masked, tasks)
    assert masked.out_proj.task is masked.task
    with maskops.use_backend("cpu"), torch.no_grad():
        mixed, _ = masked(q, q, q)
        for i, task in enumerate(tasks.tolist()):
            masked.task = task
            single, _ = masked(q, q, q)
            row = (slice(i, i + 1),) if batch_first else (slice(None), slice(i, i + 1))
            torch.testing.assert_close(mixed[row], single[row])


def test_state_dict_is_torch_s_plus_owners():
    plain, masked = _layers(kdim=6, vdim=5)
    assert set(masked.state_dict()) == set(plain.state_dict()) | {
        "q_proj_owner", "k_proj_owner", "v_proj_owner", "out_proj.owner"}
    fresh = MaskedMultiheadAttention(E, H, kdim=6, vdim=5)
    with torch.no_grad():
        fresh.q_proj_owner.zero_()
    fresh.load_state_dict(plain.state_dict())  # a plain state_dict: owners load as 1s
    assert fresh.q_proj_owner.all() and fresh.out_proj.owner.all()
    g = torch.Generator().manual_seed(7)
    q, k, v = _inputs(plain, "cross", g)
    torch.testing.assert_close(fresh(q, k, v)[0], plain(q, k, v)[0])


def test_out_mask_belongs_to_out_proj():
    _, masked = _layers()
    with pytest.raises(ValueError, match="out_proj.out_mask"):
        masked.out_mask = torch.ones(E)


def test_packnet_keeps_the_first_task_exact_and_exports_it():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(6, E), nn.MultiheadAttention(E, H, batch_first=True))
    forward = lambda x: model[1](*(model[0](x),) * 3, need_weights=False)[0]  # noqa: E731
    net = maskops.PackNet(model, prune_ratio=0.5, bias="frozen")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(B, L, 6)

    def train():
        for _ in range(3):
            opt.zero_grad()
            forward(x).square().mean().backward()
            opt.step()

    net.begin_task()
    train()
    pruned = net.prune()
    assert set(pruned) == {"0", "1.in_proj_weight", "1.out_proj"}
    assert pruned["1.in_proj_weight"] == round(0.5 * 3 * E * E)
    train()
    net.end_task()
    net.set_task(1)
    with torch.no_grad():
        first = forward(x)
    exported = net.export(1)
    assert type(exported[1]) is nn.MultiheadAttention
    assert type(exported[1].out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    with torch.no_grad():
        h = exported[0](x)
        torch.testing.assert_close(exported[1](h, h, h, need_weights=False)[0], first)
    net.begin_task()
    train()
    net.end_task()
    assert net.usage()[2] == sum(pruned.values())  # task 2 took what task 1 gave back
    net.set_task(1)
    with torch.no_grad():
        assert torch.equal(forward(x), first)
    net.close()


def test_compiles():
    _, masked = _layers(seed=9, batch_first=True)
    g = torch.Generator().manual_seed(10)
    _random_owners(masked, g)
    masked.task = 2
    q, k, v = _inputs(masked, "cross", g)
    compiled = torch.compile(masked)
    with torch.no_grad():
        torch.testing.assert_close(compiled(q, k, v, need_weights=False)[0], masked(q, k, v, need_weights=False)[0])
