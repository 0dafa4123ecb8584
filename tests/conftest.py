import pytest

import mlx_musicviz  # noqa: F401  (loads the optimized BLAS before mlx)


@pytest.fixture(scope="module")
def pipe():
    """A random-weight tiny pipeline (fast; the same weights in every module)."""
    from mlx_musicviz.pipeline import Pipeline

    return Pipeline.random("tiny")


@pytest.fixture
def cpu_device():
    """Run the test on mlx's CPU device: for tests of the CPU backend's own kernels (convolution paths,
    two-stream attention), so that they test those kernels also where mlx's default device is a GPU."""
    import mlx.core as mx

    previous = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(previous)


@pytest.fixture
def kernels_used(monkeypatch):
    """The models take the C++ kernels wherever they are built, also on a CPU where mlx's own paths are
    faster and would be chosen (`kernels.slower_here`): for tests of the kernels and of the paths that
    take them."""
    from mlx_musicviz.ops import kernels

    monkeypatch.setattr(kernels, "available", kernels.built)


@pytest.fixture
def without_kernels(monkeypatch):
    """Models and layers as they run where the C++ kernels (mlx_musicviz.ops.kernels) are not built: the
    pure-mlx paths."""
    from mlx_musicviz.ops import kernels

    monkeypatch.setattr(kernels, "available", lambda: False)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory):
    """A small random-weight checkpoint in diffusers layout (sdxs-512-0.9's architecture, tiny
    widths), with vae_large, and its MLX conversion."""
    from reference import (
        SMALL_TEXT_ENCODERS,
        SMALL_UNETS,
        build_kl_vae,
        build_text_encoder,
        build_tiny_vae,
        build_unet,
        save_diffusers_checkpoint,
    )

    from mlx_musicviz.convert import convert_checkpoint

    root = tmp_path_factory.mktemp("small")
    unet = build_unet(SMALL_UNETS["sdxs09"], seed=1)
    te = build_text_encoder(SMALL_TEXT_ENCODERS["openclip"], seed=2)
    vae = build_tiny_vae(seed=3)
    large = build_kl_vae(seed=4)
    src = save_diffusers_checkpoint(root / "diffusers", unet, te, vae, "!", vae_large=large)
    dst = convert_checkpoint(src, root / "mlx")
    return {"diffusers": src, "mlx": dst, "unet": unet, "text_encoder": te, "vae": vae, "vae_large": large}
