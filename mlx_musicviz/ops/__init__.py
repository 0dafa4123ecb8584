"""The operations the models are built on, each choosing its path for where it runs.

The models (`mlx_musicviz.models`) are architecture only: they call these functions and never ask
which device, dtype or kernels are at hand. Here, on a GPU or in half precision, each op is mlx's own
(fused) kernel. On the CPU in float32 (`on_cpu`) it takes the faster path for that backend: erf and
exp as polynomials that mlx fuses, BLAS-friendly layouts for 3x3 convolutions (rows of taps, few
outputs, Winograd), two-level statistics and matmul reductions for the norms, attention heads split
over two CPU streams, and the C++ kernels (`mlx_musicviz.ops.kernels`) where they are built and faster.
Every path is checked against PyTorch or float64 in the tests; docs/performance.md has the figures.

- elementwise.py: gelu, silu, geglu (and the polynomials)
- sdpa.py: attention, multi_head_attention
- normalization.py: group_norm, layer_norm
- convolution.py: conv2d, upsample_conv, upsample_nearest (and `conv_path`, which path conv2d takes)
- quantization.py: unpack (packed quantized weights to floats)
"""

from .convolution import conv2d, conv_path, upsample_conv, upsample_nearest
from .device import differentiable, on_cpu, prefers_quantized_matmul
from .elementwise import geglu, gelu, silu
from .normalization import group_norm, layer_norm
from .quantization import unpack
from .sdpa import attention, multi_head_attention

__all__ = ["attention", "conv2d", "conv_path", "differentiable", "geglu", "gelu", "group_norm", "layer_norm", "multi_head_attention",
           "on_cpu", "prefers_quantized_matmul", "silu", "unpack", "upsample_conv", "upsample_nearest"]
