"""The one-step pipeline in MLX (SDXS, SD-Turbo, SDXL-Turbo, SD1.5 with a one-step LoRA): tokenizer -> text
encoder(s) -> UNet (one timestep) -> scheduler step -> VAE decode.

`Pipeline.from_folder` reads an MLX checkpoint folder (`checkpoint_format`); `loading.load_pipeline`
also takes diffusers folders and hub ids, converted once into the cache.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from .checkpoint_format import ENCODER_NAME, WEIGHTS_NAME, check_plan_matches, component_plan, read_record
from .errors import MusicvizError
from .models import AutoencoderTiny, CLIPTokenizer, SchedulerConfig, build_model
from .models.configs import read_json
from .models.quantized import MIXED_PRESET, apply_plan, quantize_module, set_compute, weight_bytes
from .ops.device import differentiable
from .scheduler import OneStepScheduler
from .weights import cast_floats, load_into, load_safetensors

DEFAULT_MODEL = "IDKiro/sdxs-512-0.9"
VAE_CHOICES = ("auto", "tiny", "large")


class Pipeline:
    """One-step text-to-image with diffusers' component names.

    Latents are NHWC (N, H/8, W/8, C). Images are uint8 NHWC (N, H, W, 3). SDXL models have a second
    tokenizer and text encoder (`tokenizer_2`, `text_encoder_2`); elsewhere they are None. `vae_tiny`:
    a tiny VAE added to a model whose `vae` is a KL one (`convert --tiny-vae`), else None.
    """

    def __init__(self, tokenizer, text_encoder, unet, vae, scheduler: OneStepScheduler, folder: Path | None = None,
                 dtype=mx.float32, record: dict | None = None, tokenizer_2=None, text_encoder_2=None, vae_tiny=None):
        self.tokenizer, self.text_encoder, self.unet, self.vae = tokenizer, text_encoder, unet, vae
        self.tokenizer_2, self.text_encoder_2, self.vae_tiny = tokenizer_2, text_encoder_2, vae_tiny
        self.scheduler = scheduler
        self.scheduler_steps = (scheduler,)  # the sampling's steps: one, or several (`set_scheduler`)
        self.folder = Path(folder) if folder is not None else None
        self.dtype = dtype
        self.record = record or {}
        self._vae_large = None
        self._build_vae_large = None  # random models: builds the large VAE when it is first used
        self._kl_encoder = None
        self.compiled = False  # run the steps and decodes through mx.compile (see `_compiled`)
        self._embed_timestep()

    @classmethod
    def from_folder(cls, folder: Path, dtype=mx.float32) -> "Pipeline":
        folder = Path(folder)
        sched = folder / "scheduler" / "scheduler_config.json"
        scheduler = OneStepScheduler.from_config(SchedulerConfig.from_json(sched) if sched.exists() else SchedulerConfig())
        load = lambda name: _load_component(folder, name, dtype)  # noqa: E731
        second = {}
        if (folder / "text_encoder_2").is_dir():
            second = {"tokenizer_2": CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
                      "text_encoder_2": load("text_encoder_2")}
        if (folder / "vae_tiny").is_dir():
            second["vae_tiny"] = load("vae_tiny")
        return cls(CLIPTokenizer.from_pretrained(folder / "tokenizer"), load("text_encoder"), load("unet"),
                   load("vae"), scheduler, folder, dtype, read_record(folder), **second)

    @classmethod
    def random(cls, name: str, seed: int = 0, dtype=mx.float32, bits: int | None = None, group_size: int = 64,
               mixed: bool = False) -> "Pipeline":
        """A pipeline of a known architecture with random weights (images mean nothing); with `bits`,
        the text encoder and UNet are quantized in memory, as `convert --bits` would store them."""
        from .random_models import random_configs

        configs, pads = random_configs(name)
        mx.random.seed(seed)

        def build(part: str):
            module = build_model(configs[part])
            module.set_dtype(_component_dtype(configs[part], dtype))
            return module.eval()

        modules = {part: build(part) for part in ("text_encoder", "unet", "vae")}
        second = {}
        if "text_encoder_2" in configs:  # its own seed: the other components are those of before it existed
            mx.random.seed(seed + 2)
            second = {"tokenizer_2": CLIPTokenizer.from_pretrained().with_pad_token(pads["tokenizer_2"]),
                      "text_encoder_2": build("text_encoder_2")}
        tokenizer = CLIPTokenizer.from_pretrained().with_pad_token(pads["tokenizer"])
        scheduler = OneStepScheduler.from_config(SchedulerConfig.from_dict(configs["scheduler"]))
        pipe = cls(tokenizer, modules["text_encoder"], modules["unet"], modules["vae"], scheduler, None, dtype,
                   {"source": f"random:{name}"}, **second)
        if "vae_large" in configs:

            def build_vae_large():  # when first used; a seed of its own gives the same weights whenever that is
                mx.random.seed(seed + 1)
                return build("vae_large")

            pipe._build_vae_large = build_vae_large
        return pipe.quantize(bits, group_size, mixed) if bits else pipe

    def quantize(self, bits: int, group_size: int = 64, mixed: bool = False,
                 components: tuple[str, ...] | None = None) -> "Pipeline":
        """Quantize float components in memory (default: the text encoders and the UNet), exactly as
        `convert --bits` stores them (weights cast to float16, then quantized); returns self."""
        components = self.text_encoders() + ("unet",) if components is None else components
        quantization = dict(self.record.get("quantization", {}))
        for name in components:
            if name in quantization:
                raise MusicvizError(f"{name} is already quantized")
            module = getattr(self, name)
            plan = quantize_module(module, bits, group_size, MIXED_PRESET if mixed else None)
            set_compute(module, "auto", self.dtype)
            cast_floats(module, self.dtype)
            mx.eval(module.parameters())
            quantization[name] = plan.to_dict()
        self.record = {**self.record, "quantization": quantization}
        self._embed_timestep()
        return self

    def _embed_timestep(self) -> None:
        """The timesteps never change between calls: embed them once (batch 1 broadcasts over any batch),
        again whenever the UNet or the scheduler changes."""
        self._tembs = [self.unet.time_embed(step.timestep) for step in self.scheduler_steps]
        mx.eval(self._tembs)
        self._compiled_fns = {}  # traced with the weights as they were: traced again after a change

    def set_scheduler(self, scheduler: str | None = None, steps: int = 1) -> "Pipeline":
        """Sample with another scheduler than the checkpoint's: "lcm" (LCM-LoRA), "tcd:800" (Hyper-SD's 1-step
        LoRA), "euler", "euler_a", "ddim" or "pndm", optionally NAME:TIMESTEP (None: the checkpoint's own);
        LCM and Euler also in `steps` steps (2 to 8, each a UNet call). The record says which. Returns self."""
        import dataclasses

        from .scheduler import check_steps, parse_scheduler

        name, timestep = parse_scheduler(scheduler) if scheduler is not None else (self.scheduler.config.class_name, None)
        steps = check_steps(scheduler, steps)
        config = dataclasses.replace(self.scheduler.config, class_name=name)
        self.scheduler_steps = OneStepScheduler.steps_from_config(config, timestep, steps)
        self.scheduler = self.scheduler_steps[0]
        chosen = {"class_name": name, "timestep": self.scheduler.timestep, **({"steps": steps} if steps > 1 else {})}
        self.record = {**self.record, "scheduler": chosen}
        self._embed_timestep()
        return self

    def fuse_lora(self, path, scale: float = 1.0) -> "Pipeline":
        """Fuse the LoRA file `path` (diffusers/PEFT or kohya safetensors), `scale` times, into the
        UNet's and text encoders' float weights; the record lists it. Returns self."""
        from mlx.utils import tree_flatten, tree_unflatten

        from .lora import fuse_lora

        modules = {name: getattr(self, name) for name in ("unet", *self.text_encoders())}
        fused, done = fuse_lora({name: dict(tree_flatten(m.parameters())) for name, m in modules.items()}, path, scale)
        for name, weights in fused.items():
            modules[name].update(tree_unflatten(list(weights.items())))
            mx.eval(modules[name].parameters())
        self.record = {**self.record, "loras": [*self.record.get("loras", []), done]}
        self._embed_timestep()
        return self

    def text_encoders(self) -> tuple[str, ...]:
        """The text encoder components: ("text_encoder",), or with SDXL's second one."""
        return ("text_encoder",) + (("text_encoder_2",) if self.text_encoder_2 is not None else ())

    @property
    def vae_large(self):
        if self._vae_large is None and self._build_vae_large is not None:
            self._vae_large = self._build_vae_large()
        if self._vae_large is None:
            if self.folder is None or not (self.folder / "vae_large").is_dir():
                raise MusicvizError(f"model {self.folder or self.record.get('source')} has no vae_large/ (the large VAE)")
            self._vae_large = _load_component(self.folder, "vae_large", self.dtype)
        return self._vae_large

    @property
    def is_random(self) -> bool:
        """Whether the weights are random (`random:NAME`, or a checkpoint converted from one): the
        images mean nothing."""
        return str(self.record.get("source", "")).startswith("random:")

    @property
    def quantization(self) -> dict:
        """Per component: bits and group size of its quantized layers (empty: all float)."""
        return {k: {"bits": v["bits"], "group_size": v["group_size"]}
                for k, v in self.record.get("quantization", {}).items()}

    def weight_bytes(self) -> dict[str, int]:
        """Resident bytes of each component's weights (the large VAE's once it is loaded)."""
        loaded = (*self.text_encoders(), "unet", "vae") + (("vae_large",) if self._vae_large is not None else ()) + (
            ("vae_tiny",) if self.vae_tiny is not None else ())
        return {name: weight_bytes(getattr(self, name)) for name in loaded}

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def vae_scale_factor(self) -> int:
        return 8

    @property
    def latent_multiple(self) -> int:
        return 8  # latent sides the UNet takes: it halves them up to three times

    def latent_shape(self, height: int, width: int, batch: int = 1) -> tuple[int, int, int, int]:
        s = self.vae_scale_factor * self.latent_multiple
        if height % s or width % s or height <= 0 or width <= 0:
            raise MusicvizError(f"image size {width}x{height} is not supported: use multiples of {s}")
        return (batch, height // self.vae_scale_factor, width // self.vae_scale_factor, self.latent_channels)

    def tokenize(self, prompts: list[str], tokenizer=None) -> mx.array:
        """Token ids (N, 77) of `prompts` by `tokenizer` (default: the first one)."""
        return mx.array((self.tokenizer if tokenizer is None else tokenizer)(list(prompts)), dtype=mx.int32)

    def encode_prompt(self, prompts: str | list[str]) -> mx.array:
        """Text embeddings (N, 77, D): the text encoder's last hidden state.

        SDXL: (N, 78, D), as diffusers' `prompt_embeds` and `pooled_prompt_embeds` in one array (see
        `split_prompt_embeds`): 77 rows of both encoders' penultimate hidden states side by side (D = 768
        + 1280), then the second encoder's pooled projection (P = 1280) zero-padded to D. The walkers mix
        embeddings row by row, so the pooled embedding walks with the tokens."""
        prompts = _prompt_list(prompts)
        if self.text_encoder_2 is None:
            return self.text_encoder(self.tokenize(prompts)).last_hidden_state
        first = self.text_encoder(self.tokenize(prompts)).penultimate_hidden_state
        second = self.text_encoder_2(self.tokenize(prompts, self.tokenizer_2))
        tokens = mx.concatenate([first, second.penultimate_hidden_state.astype(first.dtype)], axis=-1)
        pooled = second.text_embeds.astype(first.dtype)
        row = mx.pad(pooled, [(0, 0), (0, tokens.shape[-1] - pooled.shape[-1])])[:, None]
        return mx.concatenate([tokens, row], axis=1)

    def split_prompt_embeds(self, prompt_embeds: mx.array) -> tuple[mx.array, mx.array | None]:
        """(prompt_embeds, pooled_prompt_embeds) as diffusers names them: SDXL's (N, 77, D) and (N, P)
        from `encode_prompt`'s (N, 78, D); other models' embeddings and None."""
        self._check_embeds(prompt_embeds)
        if self.text_encoder_2 is None:
            return prompt_embeds, None
        return prompt_embeds[:, :-1], prompt_embeds[:, -1, : self.text_encoder_2.config.projection_dim]

    def join_prompt_embeds(self, prompt_embeds: mx.array, pooled_prompt_embeds: mx.array) -> mx.array:
        """SDXL: diffusers' `prompt_embeds` (N, 77, D) and `pooled_prompt_embeds` (N, P) as the one
        (N, 78, D) array `encode_prompt` returns and `generate` takes (`split_prompt_embeds` undoes it)."""
        if self.text_encoder_2 is None:
            raise MusicvizError("join_prompt_embeds is for SDXL models (two text encoders); this one takes "
                                "prompt_embeds alone")
        p, d = self.text_encoder_2.config.projection_dim, self.unet.config.cross_attention_dim
        for name, value, shape in (("prompt_embeds", prompt_embeds, f"(N, 77, {d})"),
                                   ("pooled_prompt_embeds", pooled_prompt_embeds, f"(N, {p})")):
            if not isinstance(value, mx.array):
                raise MusicvizError(f"{name} must be an mx.array {shape}, not {type(value).__name__}")
        if (prompt_embeds.ndim != 3 or prompt_embeds.shape[1:] != (77, d) or pooled_prompt_embeds.shape
                != (prompt_embeds.shape[0], p)):
            raise MusicvizError(f"prompt_embeds must be (N, 77, {d}) and pooled_prompt_embeds (N, {p}), got "
                                f"{tuple(prompt_embeds.shape)} and {tuple(pooled_prompt_embeds.shape)}")
        row = mx.pad(pooled_prompt_embeds.astype(prompt_embeds.dtype), [(0, 0), (0, d - p)])[:, None]
        return mx.concatenate([prompt_embeds, row], axis=1)

    def _check_embeds(self, prompt_embeds) -> None:
        """MusicvizError unless `prompt_embeds` are (N, tokens, D) of this model's width, and for SDXL 78
        rows (77 tokens and the pooled row)."""
        d = self.unet.config.cross_attention_dim
        if not isinstance(prompt_embeds, mx.array):
            raise MusicvizError(f"prompt_embeds must be an mx.array (encode_prompt's output), not "
                                f"{type(prompt_embeds).__name__}")
        sdxl = self.text_encoder_2 is not None
        rows = self.tokenizer.model_max_length + 1 if sdxl else None
        if prompt_embeds.ndim != 3 or prompt_embeds.shape[2] != d or (sdxl and prompt_embeds.shape[1] != rows):
            wanted = f"(N, {rows}, {d}): 77 token rows and the pooled row (join_prompt_embeds makes them from " \
                     "diffusers' two)" if sdxl else f"(N, tokens, {d})"
            raise MusicvizError(f"prompt_embeds must be {wanted}, as encode_prompt returns, got {tuple(prompt_embeds.shape)}")

    def check_inputs(self, latents: mx.array, prompt_embeds: mx.array) -> None:
        """MusicvizError unless `latents` are (N, h, w, C) latents this UNet takes (h and w multiples
        of 8: images of multiples of 64 pixels) and `prompt_embeds` (N or 1, tokens, D) its text width.
        Shapes only: mlx's own errors for these name a convolution deep inside the model."""
        s = self.latent_multiple
        c = self.latent_channels
        if not isinstance(latents, mx.array):
            raise MusicvizError(f"latents must be an mx.array (mx.array(x) makes one), not {type(latents).__name__}")
        if latents.ndim != 4 or latents.shape[3] != c or latents.shape[1] % s or latents.shape[2] % s or not latents.size:
            raise MusicvizError(f"latents must be (N, h, w, {c}) with h and w multiples of {s} "
                                f"(images of multiples of {s * self.vae_scale_factor} pixels), got {tuple(latents.shape)}")
        self._check_embeds(prompt_embeds)
        if prompt_embeds.shape[0] not in (1, latents.shape[0]):
            raise MusicvizError(f"{prompt_embeds.shape[0]} prompt embeddings for {latents.shape[0]} latents: give one "
                                "for each, or one for all")

    def denoise(self, latents: mx.array, prompt_embeds: mx.array) -> mx.array:
        """One UNet call at the scheduler's timestep and the scheduler's step (LCM's several: one each);
        embeddings of batch 1 serve every latent."""
        self.check_inputs(latents, prompt_embeds)
        if prompt_embeds.shape[0] == 1 and latents.shape[0] > 1:
            prompt_embeds = mx.broadcast_to(prompt_embeds, (latents.shape[0], *prompt_embeds.shape[1:]))
        return self._compiled("denoise", self._denoise)(latents, prompt_embeds)

    def _compiled(self, key: str, fn):
        """`fn`, or with `compiled` set its mx.compile'd form (traced once per input shape and dtype; the
        weights, timesteps and scheduler coefficients as constants): one graph whose elementwise work
        fuses, fewer kernel launches on a GPU. It is traced through mlx's own operations, as on a GPU,
        also on the CPU device (whose fast paths, the C++ kernels among them, are not for tracing)."""
        if not self.compiled:
            return fn
        if key not in self._compiled_fns:
            traced = mx.compile(fn)

            def run(*args):
                with differentiable():  # mlx's operations, as on a GPU (only the first call traces)
                    return traced(*args)

            self._compiled_fns[key] = run
        return self._compiled_fns[key]

    def predict_noise(self, latents: mx.array, prompt_embeds: mx.array, step: int = 0) -> mx.array:
        """The UNet's noise prediction at the timestep of `scheduler_steps[step]` (its embedding computed
        once), in the compute dtype. SDXL's added conditioning: the pooled embedding and time ids of the image size, uncropped
        (as diffusers' defaults: original and target size the output's)."""
        context, pooled = self.split_prompt_embeds(prompt_embeds)
        added = None
        if pooled is not None:
            h, w = latents.shape[1] * self.vae_scale_factor, latents.shape[2] * self.vae_scale_factor
            added = (pooled, mx.broadcast_to(mx.array([[h, w, 0, 0, h, w]], dtype=mx.float32), (latents.shape[0], 6)))
        return self.unet(latents.astype(self.dtype), None, context.astype(self.dtype), temb=self._tembs[step],
                         added_cond=added)

    def _denoise(self, latents: mx.array, prompt_embeds: mx.array) -> mx.array:
        noise = latents.astype(self.dtype)
        sample = self.scheduler.scale_noise(noise)
        for i, step in enumerate(self.scheduler_steps):  # LCM's and Euler ancestral's steps noise again with `noise`
            sample = step.step(self.predict_noise(sample, prompt_embeds, i), sample, noise)
        return sample

    def vae_name(self, vae: str = "auto") -> str:
        """"tiny" or "large": `vae` itself, or for "auto" the tiny VAE where the model has one (SDXS, or
        one added by `convert --tiny-vae`), else its own AutoencoderKL (SD-Turbo, SDXL-Turbo)."""
        if vae not in VAE_CHOICES:
            raise MusicvizError(f"vae must be one of {VAE_CHOICES}, not {vae!r}")
        if vae != "auto":
            return vae
        return "tiny" if isinstance(self.vae, AutoencoderTiny) or self.vae_tiny is not None else "large"

    def vae_for(self, vae: str = "auto"):
        """The VAE module that `decode(..., vae)` uses: the tiny one ("tiny": SDXS's `vae/`, or the
        `vae_tiny/` added to a KL model) or the KL one ("large": `vae/` where it is one, as in SD-Turbo,
        else SDXS's `vae_large/`)."""
        vae = self.vae_name(vae)
        if isinstance(self.vae, AutoencoderTiny):
            return self.vae if vae == "tiny" else self.vae_large
        if vae == "tiny":
            if self.vae_tiny is None:
                taesd = "madebyollin/taesdxl" if self.text_encoder_2 is not None else "madebyollin/taesd"
                raise MusicvizError(f"model {self.folder or self.record.get('source')} has no tiny VAE (its vae/ is an "
                                    f"AutoencoderKL): use --vae large or auto, or add one with `convert MODEL DST "
                                    f"--tiny-vae {taesd}`")
            return self.vae_tiny
        return self.vae

    def decode(self, latents: mx.array, vae: str = "auto") -> mx.array:
        """Latents -> uint8 images, as diffusers' pipeline post-processes them."""
        model = self.vae_for(vae)
        decode = lambda z: to_uint8(model.decode(z / model.config.scaling_factor))  # noqa: E731
        return self._compiled(f"decode-{self.vae_name(vae)}", decode)(latents)

    def encode_images(self, images: mx.array) -> mx.array:
        """NHWC images in [-1, 1] -> the UNet's latents: the VAE's encoding (a KL VAE's mean) times its
        scaling factor, as diffusers' training scripts make them."""
        vae = self.vae if isinstance(self.vae, AutoencoderTiny) else self._load_kl_encoder()
        if "encoder" not in vae:
            raise MusicvizError(f"model {self.folder or self.record.get('source')}: its tiny VAE has no encoder")
        return vae.encode(images.astype(self.dtype)) * vae.config.scaling_factor

    def _load_kl_encoder(self):
        """The encoder half of the model's KL VAE (`vae/`), loaded when first asked for."""
        if self._kl_encoder is None:
            from .models import AutoencoderKL

            config = self.vae.config
            if self.is_random:  # random weights of a fixed seed, as the rest of a random model
                mx.random.seed(2)
                encoder = AutoencoderKL(config, encoder=True, decoder=False)
            else:
                path = (self.folder or Path(".")) / "vae" / ENCODER_NAME
                if not path.exists():
                    raise MusicvizError(f"model {self.folder} has no VAE encoder ({path}): it was converted by an "
                                        "older version; convert it again from its source to train on it")
                weights, _ = load_safetensors(path)
                encoder = load_into(AutoencoderKL(config, encoder=True, decoder=False), weights, str(path), self.dtype)
            encoder.set_dtype(self.dtype)
            self._kl_encoder = encoder.eval()
        return self._kl_encoder

    def text_to_image(self, prompt: str | list[str], latents: mx.array, vae: str = "auto") -> mx.array:
        """One still per latent: `latents` unit-variance noise (N, h, w, C), as diffusers' `latents=`
        before the scheduler scales them -> uint8 (N, 8h, 8w, 3); one prompt for all, or one each. The same
        for every model family."""
        prompts = _prompt_list(prompt)
        if isinstance(latents, mx.array) and latents.ndim == 4 and len(prompts) not in (1, latents.shape[0]):
            raise MusicvizError(f"{len(prompts)} prompts for {latents.shape[0]} latents: give one prompt for all, "
                                "or one for each")
        return self.generate(latents, self.encode_prompt(prompts), vae)

    def generate(self, latents: mx.array, prompt_embeds: mx.array, vae: str = "auto") -> mx.array:
        """Initial noise latents (N, h, w, C) and embeddings (N or 1, 77, D) -> uint8 (N, 8h, 8w, 3)."""
        return self.decode(self.denoise(latents, prompt_embeds), vae)


def _load_component(folder: Path, name: str, dtype):
    """Build the component from its config (quantized layers where the record says), load its weights."""
    path = folder / name
    if not path.is_dir():
        raise MusicvizError(f"model {folder} is incomplete: no {name}/ folder")
    config = read_json(path / "config.json")
    dtype = _component_dtype(config, dtype)
    module = build_model(config, str(path / "config.json"))
    plan = component_plan(read_record(folder), name, str(folder))
    weights, metadata = load_safetensors(path / WEIGHTS_NAME)
    check_plan_matches(plan, metadata, path / WEIGHTS_NAME)
    if plan is not None:
        apply_plan(module, plan, quantize_weights=False)
        set_compute(module, "auto", dtype)
    return load_into(module, weights, str(path / WEIGHTS_NAME), dtype)


def _prompt_list(prompts) -> list[str]:
    """A prompt or a list of prompts as a non-empty list of strings; MusicvizError otherwise."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise MusicvizError(f"a prompt is a string, or a list of strings, not {prompts!r:.60}")
    if not prompts:
        raise MusicvizError("no prompts to encode")
    return list(prompts)


def _component_dtype(config: dict, dtype):
    """The dtype a component computes in: `dtype`, but float32 for a VAE whose config asks for it
    (`force_upcast`: SDXL's VAE overflows in float16)."""
    return mx.float32 if config.get("force_upcast") else dtype


def to_uint8(images: mx.array) -> mx.array:
    """[-1, 1] floats -> uint8 with diffusers' rounding."""
    return mx.round(mx.clip(images.astype(mx.float32) / 2 + 0.5, 0, 1) * 255).astype(mx.uint8)
