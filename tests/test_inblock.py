"""The in-block reduction contract: what a method reads between attention and MLP is what the attention computed."""

from __future__ import annotations

import torch

from bench.methods.inblock import BlockView, InBlockMethod, log_size_bias


class Probe(InBlockMethod):
    """Reads everything, reduces nothing; optionally biases the attention."""

    name = ""  # not registered
    reads = ("keys", "cls_attention")

    def __init__(self, blocks, bias=None):
        super().__init__(1.0, 0)
        self.blocks, self.bias, self.views = blocks, bias, []

    def reduction_blocks(self, model):
        return self.blocks

    def attention_bias(self, model, index):
        return self.bias

    def reduce(self, model, view: BlockView):
        self.views.append(view)
        return view.x


def _explicit(block, x, bias=None):
    """The attention of ``block`` written out (no fused kernel): probabilities and mean keys."""
    attn = block.attn
    B, N, _ = x.shape
    q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    return logits.softmax(-1), k.mean(1)


def test_a_probe_changes_nothing_and_keeps_fused_attention(tiny_vit):
    dense, model = tiny_vit(), tiny_vit()
    method = Probe([1, 3])
    method.apply(model)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(model(x), dense(x), rtol=0, atol=1e-6)
    assert all(b.attn.fused_attn for b in model.blocks)
    assert [v.index for v in method.views] == [1, 3]


def test_the_view_holds_the_blocks_own_keys_and_class_attention(tiny_vit):
    model = tiny_vit()
    seen = {}
    model.blocks[2].norm1.register_forward_hook(lambda m, a, out: seen.setdefault("x", out))
    method = Probe([2])
    method.apply(model)
    model(torch.randn(2, 1, 32, 32))
    probs, keys = _explicit(model.blocks[2], seen["x"])
    view = method.views[0]
    torch.testing.assert_close(view.cls_attention, probs[:, :, 0].mean(1))
    torch.testing.assert_close(view.keys, keys)
    assert view.prefix == 1


def test_the_attention_bias_reaches_the_fused_attention_and_the_view(tiny_vit):
    model, reference = tiny_vit(), tiny_vit()
    bias = torch.zeros(1, 1, 1, 65)
    bias[..., 5:20] = 2.0  # attend more to some keys
    method = Probe([0], bias=bias)
    method.apply(model)
    x = torch.randn(2, 1, 32, 32)
    out = model(x)
    # the same bias through timm's explicit (unfused) path
    reference.blocks[0].attn.fused_attn = False
    reference.blocks[0].forward = lambda t, attn_mask=None, **kw: type(reference.blocks[0]).forward(
        reference.blocks[0], t, attn_mask=bias
    )
    torch.testing.assert_close(out, reference(x), rtol=1e-5, atol=1e-5)
    assert model.blocks[0].attn.fused_attn
    assert not torch.allclose(out, tiny_vit()(x), atol=1e-4)  # the bias changed the output


def test_remove_restores_the_block_forward(tiny_vit):
    model, dense = tiny_vit(), tiny_vit()
    method = Probe([0, 1], bias=torch.zeros(1, 1, 1, 65) - 1.0)
    method.apply(model)
    method.remove()
    assert "forward" not in vars(model.blocks[0])
    x = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(model(x), dense(x), rtol=0, atol=0)


def test_log_size_bias_is_a_per_key_bias():
    size = torch.tensor([[[1.0], [2.0], [4.0]]])
    assert torch.equal(log_size_bias(size), size.log().view(1, 1, 1, 3))
