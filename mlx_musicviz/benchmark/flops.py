"""Counting a call's FLOPs and layer shapes by watching the model's convolution, linear and attention
layers (their classes' `__call__` wrapped for the duration, then restored)."""

from __future__ import annotations

import json
from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn


def _watched_classes():
    """(class, kind) of the layers the benchmark counts and times. Kinds: "conv", "linear",
    "attention" (a UNet or VAE attention: the products of its core) and "clip_attention" (the
    text encoder's)."""
    from ..models import layers, quantized, text_encoder

    return ((nn.Conv2d, "conv"), (layers.Conv2d, "conv"), (quantized.QuantizedConv2d, "conv"), (nn.Linear, "linear"),
            (quantized.QuantizedLinear, "linear"), (layers.Attention, "attention"),
            (text_encoder.CLIPAttention, "clip_attention"))


@contextmanager
def _wrapping(targets):
    """Within the block, each target (owner, attribute name, wrap) has its attribute replaced by
    `wrap(original)`; a class's own attribute is the one wrapped. All are restored on exit."""
    originals = []
    for owner, name, wrap in targets:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        originals.append((owner, name, original))
        setattr(owner, name, wrap(original))
    try:
        yield
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)


@contextmanager
def watching_layers(on_call):
    """Within the block, every top-level call of a convolution, linear layer or attention module is
    reported as `on_call(kind, module, args, out)` (a subclass calling its parent's `__call__`, as
    layers.Conv2d may, is reported once). So is every `ops.upsample_conv(x, conv)`, as a call of
    `conv` on `(x,)` whose output is twice x's size (the convolution's FLOPs are those of the
    upsampled map however it is computed). The classes and the function are restored on exit."""
    from .. import ops

    depth = {}

    def reporting(kind, module_and_args):
        depth.setdefault(kind, 0)

        def wrap(original):
            def call(*args, **kwargs):
                depth[kind] += 1
                try:
                    out = original(*args, **kwargs)
                finally:
                    depth[kind] -= 1
                if depth[kind] == 0:
                    on_call(kind, *module_and_args(args), out)
                return out

            return call

        return wrap

    targets = [(cls, "__call__", reporting(kind, lambda args: (args[0], args[1:]))) for cls, kind in _watched_classes()]
    targets.append((ops, "upsample_conv", reporting("conv", lambda args: (args[1], args[:1]))))
    with _wrapping(targets):
        yield


def call_layer(spec: dict, module, x: mx.array) -> mx.array:
    """`module` on x as `layer_shapes` saw it called: upsampled first where `spec` says so."""
    from .. import ops

    return ops.upsample_conv(x, module) if spec.get("upsample") else module(x)


def _conv_kernel(module) -> tuple:
    """(O, kh, kw, C) of a float or quantized convolution."""
    return tuple(module.kernel_shape if hasattr(module, "kernel_shape") else module.weight.shape)


def layer_flops(kind: str, module, args, out) -> float:
    """FLOPs of one call: 2 x its multiply-adds (for attention, those of q k^T and of weights @ v)."""
    if kind == "conv":
        _, kh, kw, c = _conv_kernel(module)
        return 2.0 * out.size * kh * kw * c
    if kind == "linear":
        return 2.0 * out.size * args[0].shape[-1]
    x = args[0]
    if kind == "clip_attention":
        return 4.0 * x.shape[0] * x.shape[1] * x.shape[1] * x.shape[2]
    context = args[1] if len(args) > 1 and args[1] is not None else x
    return 4.0 * x.shape[0] * x.shape[1] * context.shape[1] * out.shape[-1]


def count_flops(fn) -> float:
    """FLOPs of one call of `fn`: 2 x multiply-adds of every convolution, linear layer and attention
    product it runs (elementwise work is not counted)."""
    total = [0.0]

    def add(kind, module, args, out):
        total[0] += layer_flops(kind, module, args, out)

    with watching_layers(add):
        fn()
    return total[0]


def layer_shapes(fn) -> list[dict]:
    """The distinct convolution and linear-layer calls of one call of `fn`, in order of first call.

    Each: kind ("conv" or "linear"), input shape (convolutions NHWC), weight shape (convolutions
    (O, kh, kw, C), linear layers (O, K)), stride and padding (convolutions), `upsample` (2, for a
    convolution of the upsampled input, `ops.upsample_conv`; absent otherwise), bias, how many
    calls had that shape, FLOPs per call, and `module`, one of the modules that made those calls.
    """
    shapes = {}

    def record(kind, module, args, out):
        if kind not in ("conv", "linear"):
            return
        x = tuple(args[0].shape)
        if kind == "conv":
            spec = {"kind": kind, "input": x, "weight": _conv_kernel(module), "stride": tuple(module.stride),
                    "padding": tuple(module.padding)}
            if out.shape[1] > x[1]:
                spec["upsample"] = out.shape[1] // x[1]  # ops.upsample_conv: nearest upsampling first
        else:
            spec = {"kind": kind, "input": x, "weight": (out.shape[-1], x[-1])}
        spec["bias"] = "bias" in module
        key = json.dumps(spec)
        if key not in shapes:
            shapes[key] = {**spec, "calls": 0, "flops": layer_flops(kind, module, args, out), "module": module}
        shapes[key]["calls"] += 1

    with watching_layers(record):
        fn()
    return list(shapes.values())
