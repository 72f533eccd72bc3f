"""Masked conv2d as implicit GEMM over NHWC tensors, on the kernels of maskops.triton.matmul.

Rows are output pixels (forward, weight gradient) or input pixels (input gradient);
K runs over (kernel row, kernel col, channel) with the channel fastest, so each
K-tile reads contiguous NHWC channels.  The weight is seen per group as
[Cout/groups, kh*kw*Cin/groups] (forward) or [Cin/groups, kh*kw*Cout/groups] (input
gradient); the owner's copies in those layouts are cached with its tile plans.
Results come back channels_last.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

from maskops.selection import Vis
from maskops.triton import launch
from maskops.triton.masks import Layout, occupancy
from maskops.triton.materialize import masked_weight
from maskops.triton.matmul import Geometry, gemm, times_out_mask, wgrad
from maskops.triton.tiles import DGRAD, IM2COL


def _forward_layout(groups: int) -> Layout:
    return Layout(f"conv/{groups}", lambda t: t.permute(0, 2, 3, 1).reshape(groups, t.shape[0] // groups, -1))


def _input_grad_layout(groups: int) -> Layout:
    def fn(t):
        cout, cin_g, kh, kw = t.shape
        return t.view(groups, cout // groups, cin_g, kh, kw).permute(0, 2, 3, 4, 1).reshape(groups, cin_g, -1)
    return Layout(f"conv_t/{groups}", fn)


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1).contiguous()  # free when t is channels_last


def _out_size(size, k, stride, padding, dilation):
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def conv2d_forward(x, w, vis: Vis, bias, out_mask, stride, padding, dilation, groups, *,
                   config=None, packed=True):
    batch, c, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    oh, ow = (_out_size(h, kh, stride[0], padding[0], dilation[0]),
              _out_size(wd, kw, stride[1], padding[1], dilation[1]))
    geometry = Geometry(h, wd, c, oh, ow, kw, cin_g, *stride, *padding, *dilation)
    rows = batch * oh * ow

    def run(cfg):
        if cfg.materialize:
            y = F.conv2d(x, masked_weight(w, vis, packed), bias, stride, padding, dilation, groups)
            return times_out_mask(y, None if out_mask is None else out_mask.reshape(*out_mask.shape, 1, 1))
        xh, out = _nhwc(x), x.new_empty((batch, oh, ow, cout))
        gemm(xh, w, vis.per_row(oh * ow), _forward_layout(groups), out.view(rows, cout), cfg,
             gather=IM2COL.value, geometry=geometry, bias=bias, out_mask=out_mask, om_div=oh * ow,
             packed=packed)
        return out.permute(0, 3, 1, 2)
    return launch.choose(
        launch.tune_key("conv2d_forward", rows, x.dtype, vis, *x.shape, *w.shape, stride, padding,
                        dilation, groups, occupancy(vis, _forward_layout(groups)), packed,
                        out_mask is not None),
        launch.gemm_configs(rows, cout, kh * kw * cin_g, x.dtype, x.device, vis.mixed),
        run, config)


def conv2d_grad_input(grad, w, vis: Vis, input_shape, stride, padding, dilation, groups, *,
                      config=None, packed=True):
    batch, c, h, wd = input_shape
    cout, cin_g, kh, kw = w.shape
    oh, ow = grad.shape[2:]
    geometry = Geometry(oh, ow, cout, h, wd, kw, cout // groups, *stride, *padding, *dilation)
    rows = batch * h * wd

    def run(cfg):
        if cfg.materialize:
            return conv2d_input(input_shape, masked_weight(w, vis, packed), grad, stride, padding,
                                dilation, groups)
        gh, out = _nhwc(grad), grad.new_empty((batch, h, wd, c))
        gemm(gh, w, vis.per_row(h * wd), _input_grad_layout(groups), out.view(rows, c), cfg,
             gather=DGRAD.value, geometry=geometry, packed=packed)
        return out.permute(0, 3, 1, 2)
    return launch.choose(
        launch.tune_key("conv2d_grad_input", rows, grad.dtype, vis, *input_shape, *w.shape, stride,
                        padding, dilation, groups, occupancy(vis, _input_grad_layout(groups)), packed),
        launch.gemm_configs(rows, c, kh * kw * cout // groups, grad.dtype, grad.device,
                            vis.mixed), run, config)


def conv2d_grad_weight(grad, x, vis: Vis, weight_shape, stride, padding, dilation, groups, *,
                       config=None):
    batch, c, h, wd = x.shape
    cout, cin_g, kh, kw = weight_shape
    oh, ow = grad.shape[2:]
    geometry = Geometry(h, wd, c, oh, ow, kw, cin_g, *stride, *padding, *dilation)
    rows = batch * oh * ow
    shape = (groups, cout // groups, kh * kw * cin_g)

    def run(cfg):
        if cfg.materialize:
            return masked_weight(conv2d_weight(x, weight_shape, grad, stride, padding, dilation, groups),
                                 vis)
        dw = wgrad(_nhwc(grad).view(rows, cout), _nhwc(x), vis.per_row(oh * ow),
                   _forward_layout(groups), shape, cfg, gather=IM2COL.value, geometry=geometry)
        return dw.view(cout, kh, kw, cin_g).permute(0, 3, 1, 2).contiguous()
    return launch.choose(
        launch.tune_key("conv2d_grad_weight", rows, x.dtype, vis, *x.shape, *weight_shape, stride,
                        padding, dilation, groups, occupancy(vis, _forward_layout(groups))),
        launch.wgrad_configs(rows, x.dtype, vis.mixed), run, config)
