"""The benchmark runner (`musicviz-mlx bench`): frames per second by precision level, batch size and
component, against the machine's matmul peak and, where torch and diffusers are installed, against
PyTorch on the same weights (benchmarks/torch_reference.py, in a process of its own).

- config.py: `BenchConfig`, `BenchResult`, the machine (device, matmul peak, BLAS)
- run.py: `run_benchmark` (and `bench_render`, the render scenario)
- live.py: `bench_live`, live mode with a simulated page
- interleave.py: timings taken in turns, and each layer shape timed alone
- flops.py: FLOPs and layer shapes of a call, counted by watching the layers
- profile.py: a frame's time by kind of work
- report.py: Markdown, chart and JSON
"""

from .config import (
                     COMPONENTS,
                     LEVELS,
                     BenchConfig,
                     BenchResult,
                     level_peak,
                     machine_info,
                     matmul_peak,
                     on_gpu,
                     reference_device,
                     tf32_enabled,
)
from .flops import call_layer, count_flops, layer_flops, layer_shapes, watching_layers
from .interleave import interleaved_times, layer_totals, time_layers
from .live import bench_live
from .profile import PROFILE_KINDS, profile_frame, profile_frames, timing_kinds
from .report import chart, markdown, write_outputs
from .run import bench_render, run_benchmark

__all__ = ["COMPONENTS", "LEVELS", "PROFILE_KINDS", "BenchConfig", "BenchResult", "bench_live", "bench_render",
           "call_layer", "chart", "count_flops", "interleaved_times", "layer_flops", "layer_shapes", "layer_totals",
           "level_peak", "machine_info", "markdown", "matmul_peak", "on_gpu", "profile_frame", "profile_frames",
           "reference_device", "run_benchmark", "tf32_enabled", "time_layers", "timing_kinds", "watching_layers",
           "write_outputs"]
