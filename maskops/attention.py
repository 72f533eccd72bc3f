"""MaskedMultiheadAttention: nn.MultiheadAttention whose projections are task-masked.

nn.MultiheadAttention keeps its input projection in bare Parameters (`in_proj_weight`, or
`q_proj_weight`/`k_proj_weight`/`v_proj_weight` when key/value sizes differ) and its forward
reads `out_proj.weight` without calling `out_proj`, so converting the Linear layers alone
would leave attention unmasked.  This class masks each projection weight with its own owner
buffer (`in_proj_owner`, or `q_proj_owner`/...) and runs `out_proj` as a masked layer, with
the same constructor, Parameters, state_dict keys and forward signature.

The projections run batch first, so per-sample tasks work whatever `batch_first` is; the
attention between them is torch's (scaled_dot_product_attention, or the explicit softmax when
the weights are asked for), with torch's mask rules.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from maskops import ops
from maskops.nn import TaskMaskedLayer, owner_name


class MaskedMultiheadAttention(TaskMaskedLayer, nn.MultiheadAttention):
    plain_class = nn.MultiheadAttention

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_task_state()

    def masked_weights(self) -> tuple:
        if self._qkv_same_embed_dim:
            return ("in_proj_weight",)
        return ("q_proj_weight", "k_proj_weight", "v_proj_weight")

    def _init_task_state(self):
        if not isinstance(self.out_proj, TaskMaskedLayer):
            from maskops.conversion import masked_class  # conversion imports this module
            self.out_proj.__class__ = masked_class(type(self.out_proj))
            self.out_proj._init_task_state()
        super()._init_task_state()

    # The task is the whole layer's: out_proj follows it.
    @property
    def task(self):
        return self._task

    @task.setter
    def task(self, value):
        TaskMaskedLayer.task.fset(self, value)
        self.out_proj.task = self._task

    @property
    def out_mask(self):
        return None

    @out_mask.setter
    def out_mask(self, value):
        if value is not None:
            raise ValueError("MaskedMultiheadAttention has no out_mask of its own: set out_proj.out_mask")

    def _project(self, x: torch.Tensor, name: str, rows: slice) -> torch.Tensor:
        """x @ W.T + b for the projection weight `name`, masked; `rows` of in_proj_weight
        (and of in_proj_bias, which holds the q, k and v biases in either layout)."""
        weight, owner = getattr(self, name), getattr(self, owner_name(name))
        if name == "in_proj_weight" and rows != slice(0, weight.shape[0]):
            weight, owner = weight[rows], self._owner_rows(owner, rows)
        bias = None if self.in_proj_bias is None else self.in_proj_bias[rows]
        return ops.task_linear(x, weight, owner, self.task, bias)

    def _owner_rows(self, owner: torch.Tensor, rows: slice) -> torch.Tensor:
        """owner[rows], the same view object on every call: the ops cache what they derive
        from an owner (bit maps, tile plans) per owner object."""
        views = self.__dict__.setdefault("_owner_views", {})
        view = views.get((rows.start, rows.stop))
        if view is None or view._base is not owner:
            view = views[(rows.start, rows.stop)] = owner[rows]
        return view

    def _in_projection(self, query, key, value):
        E = self.embed_dim
        q_rows, k_rows, v_rows = slice(0, E), slice(E, 2 * E), slice(2 * E, 3 * E)
        if not self._qkv_same_embed_dim:
            return (self._project(query, "q_proj_weight", q_rows),
                    self._project(key, "k_proj_weight", k_rows),
                    self._project(value, "v_proj_weight", v_rows))
        # One product for self-attention, one for a shared key/value input: what torch does.
        if query is key and key is value:
            return self._project(query, "in_proj_weight", slice(0, 3 * E)).chunk(3, dim=-1)
        q = self._project(query, "in_proj_weight", q_rows)
        if key is value:
            return (q, *self._project(key, "in_proj_weight", slice(E, 3 * E)).chunk(2, dim=-1))
        return q, self._project(key, "in_proj_weight", k_rows), self._project(value, "in_proj_weight", v_rows)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False):
        # torch's own helpers (F._mha_shape_check, F._canonical_mask): shapes and masks are
        # checked and read exactly as nn.MultiheadAttention reads them.
        batched = F._mha_shape_check(query, key, value, key_padding_mask, attn_mask, self.num_heads)
        if not batched:  # (L, E): a batch of one, batch first
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # (L, B, E) -> (B, L, E), keeping `is` between the inputs
            same_kv, same_qk = key is value, query is key
            query = query.transpose(0, 1)
            key = query if same_qk else key.transpose(0, 1)
            value = key if same_kv else value.transpose(0, 1)
        if query.shape[-1] != self.embed_dim:
            raise ValueError(f"expected query's last dimension to be embed_dim = {self.embed_dim}, "
                             f"got {query.shape[-1]}")
        out, weights = self._attention(query, key, value, key_padding_mask, need_weights, attn_mask,
                                       average_attn_weights, is_causal)
        if not batched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def _attention(self, query, key, value, key_padding_mask, need_weights, attn_mask,
                   average_attn_weights, is_causal):
        """Batch-first inputs; torch's F.multi_head_attention_forward with masked projections."""
        B, Lq, E = query.shape
        H, hd = self.num_heads, self.head_dim
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                             other_type=F._none_or_dtype(attn_mask),
                                             other_name="attn_mask", target_type=query.dtype)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as torch's "
                               "MultiheadAttention)")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None
        else:
            attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None,
                                          other_name="", target_type=query.dtype, check_other=False)
            is_causal = is_causal and key_padding_mask is None

        q, k, v = self._in_projection(query, key, value)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(B, 1, E)], dim=1)
            v = torch.cat([v, self.bias_v.expand(B, 1, E)], dim=1)
        q, k, v = (t.reshape(B, t.shape[1], H, hd).transpose(1, 2) for t in (q, k, v))
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(B, H, 1, hd)], dim=2)
            v = torch.cat([v, v.new_zeros(B, H, 1, hd)], dim=2)
        extra = k.shape[2] - key.shape[1]  # bias_k and zero attention add key positions
        Lk = k.shape[2]

        mask = None
        if attn_mask is not None:
            mask = F.pad(attn_mask, (0, extra)) if extra else attn_mask
            mask = mask.view(1, 1, Lq, Lk) if mask.dim() == 2 else mask.view(B, H, Lq, Lk)
        if key_padding_mask is not None:
            padding = F.pad(key_padding_mask, (0, extra)) if extra else key_padding_mask
            padding = padding.view(B, 1, 1, Lk)
            mask = padding if mask is None else mask + padding
        dropout = self.dropout if self.training else 0.0

        if need_weights:
            scores = (q * math.sqrt(1.0 / hd)) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            weights = scores.softmax(dim=-1)
            if dropout > 0.0:
                weights = F.dropout(weights, p=dropout)
            out = weights @ v
            weights = weights.mean(dim=1) if average_attn_weights else weights
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 is_causal=is_causal)
            weights = None
        out = self.out_proj(out.transpose(1, 2).reshape(B, Lq, E))
        return out, weights
