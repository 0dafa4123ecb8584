"""The one-step sampler: what diffusers' StableDiffusionPipeline does with num_inference_steps=1.

For SDXS (PNDM config, epsilon prediction, trailing spacing) the UNet runs once at t = 999 and
the scheduler takes the DDIM step to ᾱ_prev = alphas_cumprod[0] (set_alpha_to_one: false):
    x0 = (z - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t);   latents = sqrt(ᾱ_prev) x0 + sqrt(1 - ᾱ_prev) ε
PNDM's first PLMS step and DDIM's step are the same formula, so one function serves both.
Euler (SD-Turbo) starts from the noise times init_noise_sigma (σ itself for trailing or linspace
spacing, else sqrt(σ² + 1)) and gives the UNet that sample over sqrt(σ² + 1): the UNet sees the unit
noise times `noise_scale` (sqrt(1 - ᾱ_t) for trailing spacing). Its step to σ = 0 is the DDIM formula
on that scaled noise with ᾱ_prev = 1 (x0 = σ (z - ε) for ε-prediction), so one formula serves all three.
Euler ancestral (SDXL-Turbo) adds noise of σ_up = 0 on a step to σ = 0: its one step is Euler's.
LCM and TCD (the schedulers of LCM-LoRA and Hyper-SD) take their one step at the last timestep of their
original 50-step grid (999), or where asked (Hyper-SD's 1-step LoRA: 800). LCM returns its boundary-
condition output c_skip z + c_out x0 (ᾱ_prev = 1); TCD's last step lands on ᾱ_0, as DDIM's does.
LCM also samples in N steps (LCM-LoRA's 2 to 8): N timesteps evenly spaced over its original grid, each step's
boundary-condition output noised again to the next timestep's ᾱ. diffusers draws fresh noise there; here it
is the frame's own starting noise, as StreamDiffusion keeps its noise fixed, so that a frame depends on its
latents alone and the walks stay smooth.
Euler (SD-Turbo's) in N steps is DDIM's step between its timesteps' ᾱ (x0 + σ' ε, seen at the next scale);
Euler ancestral (SDXL-Turbo's) lands on x0 + σ_down ε + σ_up n, σ_up = σ' sqrt(1 - σ'²/σ²) of fresh noise n,
here again the frame's own noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import mlx.core as mx
import numpy as np

from .errors import MusicvizError
from .models.configs import SchedulerConfig


def alphas_cumprod(config: SchedulerConfig) -> np.ndarray:
    """ᾱ_t for t = 0..T-1 in float32, as diffusers computes them."""
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = np.asarray(config.trained_betas, dtype=np.float32)
    elif config.beta_schedule == "scaled_linear":
        betas = np.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=np.float32) ** 2
    elif config.beta_schedule == "linear":
        betas = np.linspace(config.beta_start, config.beta_end, n, dtype=np.float32)
    else:
        raise MusicvizError(f"scheduler: beta_schedule {config.beta_schedule!r} is not supported")
    return np.cumprod(1.0 - betas, dtype=np.float32)


# The schedulers whose single step is the DDIM formula below, and the short names that choose them.
SCHEDULERS = ("PNDMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
              "LCMScheduler", "TCDScheduler")
NAMES = {"pndm": "PNDMScheduler", "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
         "euler_a": "EulerAncestralDiscreteScheduler", "lcm": "LCMScheduler", "tcd": "TCDScheduler"}
MULTISTEP = ("LCMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler")  # sample in several steps


MAX_STEPS = 8  # LCM-LoRA is made for 2 to 8 steps; SD-Turbo and SDXL-Turbo for 1 to 4


def check_steps(scheduler: str | None, steps) -> int:
    """`steps` as a whole number, checked against `scheduler` where given (None: the model's, checked
    when it loads): LCM and Euler (ancestral or not) sample in several steps, the others in one."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= MAX_STEPS:
        raise MusicvizError(f"steps must be a whole number from 1 to {MAX_STEPS}, got {steps!r:.40}")
    if steps > 1 and scheduler is not None:
        name, timestep = parse_scheduler(scheduler)
        _check_multistep(name, steps)
        if timestep is not None:
            raise MusicvizError("give the scheduler either a timestep (NAME:T, one step) or several steps, not both")
    return int(steps)


def _check_multistep(class_name: str, steps: int) -> None:
    if class_name not in MULTISTEP:
        raise MusicvizError(f"{steps} steps need a scheduler that takes several: lcm (LCM-LoRA's), euler (SD-Turbo's) "
                            f"or euler_a (SDXL-Turbo's), by --scheduler or scheduler=; {class_name} takes one step")


def check_scheduler(scheduler: str | None, steps=1) -> int:
    """Check a `--scheduler` (None: the model's) and `--steps` before any work; returns the steps."""
    if scheduler is not None:
        parse_scheduler(scheduler)
    return check_steps(scheduler, steps)


def lcm_timesteps(config: SchedulerConfig, steps: int) -> list[int]:
    """LCM's `steps` timesteps, as diffusers' LCMScheduler.set_timesteps(steps) chooses them."""
    k = config.num_train_timesteps // config.original_inference_steps
    grid = (np.arange(1, config.original_inference_steps + 1) * k - 1)[::-1]
    return [int(t) for t in grid[np.floor(np.linspace(0, len(grid), steps, endpoint=False)).astype(np.int64)]]


def euler_timesteps(config: SchedulerConfig, steps: int) -> list[int]:
    """Euler's `steps` timesteps, as diffusers' EulerDiscreteScheduler.set_timesteps(steps) spaces them."""
    n = config.num_train_timesteps
    if config.timestep_spacing == "trailing":
        ts = np.round(np.arange(n, 0, -n / steps)) - 1
    elif config.timestep_spacing == "leading":
        ts = (np.arange(0, steps) * (n // steps)).round()[::-1] + config.steps_offset
    else:
        ts = np.linspace(0, n - 1, steps)[::-1]
    if np.any(ts != np.round(ts)):
        raise MusicvizError(f"{steps} steps of this {config.timestep_spacing}-spaced scheduler fall between "
                            "timesteps: choose a number of steps that divides its range (or 1)")
    return [int(t) for t in ts]


def parse_scheduler(text: str) -> tuple[str, int | None]:
    """"NAME" or "NAME:TIMESTEP" (e.g. "tcd:800") -> (scheduler class name, timestep or None)."""
    name, colon, timestep = str(text).partition(":")
    if name.lower() not in NAMES:
        raise MusicvizError(f"unknown scheduler {name!r}; choose one of {', '.join(NAMES)} (optionally NAME:TIMESTEP)")
    if colon and not timestep.strip():
        raise MusicvizError(f"no timestep after {name}: (NAME or NAME:TIMESTEP, e.g. tcd:800)")
    try:
        t = int(timestep) if timestep else None
    except ValueError:
        raise MusicvizError(f"the scheduler's timestep must be a whole number, got {timestep!r}") from None
    return NAMES[name.lower()], t


@dataclass(frozen=True)
class OneStepScheduler:
    timestep: int
    alpha_t: float  # ᾱ at the UNet's timestep
    alpha_prev: float  # ᾱ the step lands on
    prediction_type: str
    noise_scale: float = 1.0  # what the unit-noise latents are multiplied by before the UNet and the step
    renoise: float = 0.0  # the share of `step`'s noise in the noise its output carries (LCM 1, Euler ancestral σ_up / σ')
    c_skip: float = 0.0  # LCM's boundary condition: the step's x0 is c_skip * sample + c_out * x0
    c_out: float = 1.0
    config: SchedulerConfig = field(default_factory=SchedulerConfig, compare=False, repr=False)  # for training

    @classmethod
    def from_config(cls, config: SchedulerConfig, timestep: int | None = None) -> "OneStepScheduler":
        """The one step `config` takes, at `timestep` when given (as diffusers' `timesteps=[t]`)."""
        ac = alphas_cumprod(config)
        n = config.num_train_timesteps
        spacing = config.timestep_spacing
        if config.class_name in ("LCMScheduler", "TCDScheduler"):
            t = config.original_inference_steps * (n // config.original_inference_steps) - 1
        elif spacing in ("trailing", "linspace"):
            t = n - 1
        elif spacing == "leading":
            t = config.steps_offset
        else:
            raise MusicvizError(f"scheduler: timestep_spacing {spacing!r} is not supported")
        if timestep is not None:
            if not 0 <= timestep < n:
                raise MusicvizError(f"the scheduler's timestep must be from 0 to {n - 1}, got {timestep}")
            t = timestep
        if config.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise MusicvizError(f"scheduler: prediction_type {config.prediction_type!r} is not supported")
        if config.class_name not in SCHEDULERS:
            raise MusicvizError(f"scheduler: {config.class_name} is not supported (one of {', '.join(SCHEDULERS)})")
        if config.use_karras_sigmas:
            raise MusicvizError("scheduler: use_karras_sigmas is not supported")
        if config.class_name in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"):
            sigma = ((1 - ac[t]) / ac[t]) ** 0.5
            init = sigma if spacing in ("trailing", "linspace") else (sigma**2 + 1) ** 0.5
            return cls(int(t), float(ac[t]), 1.0, config.prediction_type, float(init / (sigma**2 + 1) ** 0.5),
                       config=config)
        if config.class_name == "LCMScheduler":
            scaled, sigma_data = t * config.timestep_scaling, 0.5
            c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
            c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
            return cls(int(t), float(ac[t]), 1.0, config.prediction_type, c_skip=c_skip, c_out=c_out, renoise=1.0,
                       config=config)
        final = 1.0 if config.set_alpha_to_one and config.class_name != "TCDScheduler" else float(ac[0])
        return cls(int(t), float(ac[t]), final, config.prediction_type, config=config)

    def scale_noise(self, latents: mx.array) -> mx.array:
        """The sample the UNet and `step` take, from unit-variance noise latents."""
        return latents if self.noise_scale == 1.0 else latents * self.noise_scale

    @classmethod
    def steps_from_config(cls, config: SchedulerConfig, timestep: int | None = None,
                          steps: int = 1) -> tuple["OneStepScheduler", ...]:
        """The steps of a sampling in `steps` steps (one: `from_config`), each landing on the next one's ᾱ,
        the last on ᾱ = 1 (LCM: its boundary condition; see `step`'s `noise`)."""
        if steps == 1:
            return (cls.from_config(config, timestep),)
        _check_multistep(config.class_name, steps)
        ac = alphas_cumprod(config)
        ts = lcm_timesteps(config, steps) if config.class_name == "LCMScheduler" else euler_timesteps(config, steps)
        out = []
        for i, t in enumerate(ts):
            first = cls.from_config(config, t)
            prev = float(ac[ts[i + 1]]) if i + 1 < steps else 1.0
            renoise = first.renoise
            if config.class_name == "EulerAncestralDiscreteScheduler" and prev < 1.0:
                sigma2, next2 = (1 - first.alpha_t) / first.alpha_t, (1 - prev) / prev
                renoise = (1 - next2 / sigma2) ** 0.5
            out.append(replace(first, alpha_prev=prev, renoise=renoise))
        return tuple(out)

    def step(self, model_output: mx.array, sample: mx.array, noise: mx.array | None = None) -> mx.array:
        """Latents after the denoising step from `sample` (`scale_noise`'s output). `noise`: the unit noise
        whose `renoise` share the output's noise takes (LCM's and Euler ancestral's steps before the last);
        the rest is the predicted noise, as DDIM's."""
        a, a_prev = self.alpha_t, self.alpha_prev
        sa, sb = a**0.5, (1 - a) ** 0.5
        if self.prediction_type == "epsilon":
            eps = model_output
            x0 = (sample - sb * eps) / sa
        elif self.prediction_type == "v_prediction":
            x0 = sa * sample - sb * model_output
            eps = sa * model_output + sb * sample
        else:
            x0 = model_output
            eps = (sample - sa * x0) / sb
        if self.c_skip or self.c_out != 1.0:
            x0 = self.c_skip * sample + self.c_out * x0
        if noise is not None and self.renoise:
            eps = noise if self.renoise == 1.0 else (1 - self.renoise**2) ** 0.5 * eps + self.renoise * noise
        return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
