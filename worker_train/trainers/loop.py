"""The training loop every LoRA trainer shares: optimizer, progress bar, loss curve, checkpoints.

A trainer supplies ``loss_at(step)`` (the loss of that step's batch: examples, noise and
dropout are drawn from generators seeded by ``seed`` and the step, so a resumed run sees the
same batches as an uninterrupted one), the trainable parameters, and how to read and load
their weights. The loop does the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.core.errors import ConfigError
from common.core.progress import bar
from common.runtime.devices import resolve_device
from worker_train import checkpoints

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hyper:
    """Everything that shapes a train job besides its data; recorded on the adapter."""

    rank: int
    lr: float
    steps: int
    batch_size: int = 2
    resolution: int = 256
    checkpoint_every: int = 25
    seed: int = 0
    conditioning_dropout: float = 0.05
    gradient_checkpointing: bool = True
    optimizer: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    quantization: str = "auto"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Runtime:
    """What ``auto`` came to on this machine."""

    device: str
    dtype: Any  # torch.dtype
    optimizer: str

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


@dataclass
class TrainResult:
    loss_curve: list[list[float]]  # [[step, loss], ...]
    steps: int
    seconds: float
    resumed_from: int | None
    eval_loss_start: float
    eval_loss_end: float
    runtime: dict[str, Any] = field(default_factory=dict)


def runtime_for(hp: Hyper) -> Runtime:
    import torch

    device = resolve_device(hp.device)
    cuda = device.startswith("cuda")
    if hp.dtype == "auto":
        dtype = torch.bfloat16 if cuda else torch.float32
    else:
        dtype = getattr(torch, hp.dtype)
    optimizer = hp.optimizer if hp.optimizer != "auto" else ("adamw8bit" if cuda else "adamw")
    return Runtime(device, dtype, optimizer)


def make_optimizer(params: list[Any], hp: Hyper, rt: Runtime) -> Any:
    import torch

    if rt.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError("train.optimizer adamw8bit needs bitsandbytes: pip install 'synthpipe[train]'") from None
        return bnb.optim.AdamW8bit(params, lr=hp.lr, weight_decay=1e-2)
    return torch.optim.AdamW(params, lr=hp.lr, weight_decay=1e-2)


def run(
    *,
    desc: str,
    hp: Hyper,
    rt: Runtime,
    params: list[Any],
    loss_at: Callable[[int], Any],
    eval_loss: Callable[[], float],
    get_weights: Callable[[], dict[str, Any]],
    set_weights: Callable[[dict[str, Any]], None],
    checkpoint_dir: Path,
) -> TrainResult:
    """Train ``hp.steps`` optimizer steps, resuming from the newest checkpoint in ``checkpoint_dir``."""
    import torch

    optimizer = make_optimizer(params, hp, rt)
    start, curve, resumed = 0, [], None
    seconds_before = 0.0
    ckpt = checkpoints.latest(checkpoint_dir)
    if ckpt is not None:
        set_weights(ckpt.weights)
        optimizer.load_state_dict(ckpt.optimizer)
        start, curve, resumed = ckpt.step, list(ckpt.state["loss_curve"]), ckpt.step
        eval_start = float(ckpt.state["eval_loss_start"])
        seconds_before = float(ckpt.state.get("seconds", 0.0))
        log.info("%s: resuming from the checkpoint at step %d", desc, start)
    else:
        eval_start = eval_loss()
    started = time.perf_counter()

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - started

    with bar(desc=desc, total=hp.steps, unit="step") as pbar:
        pbar.update(start)
        for step in range(start, hp.steps):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_at(step)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            value = float(loss.detach().float().item())
            curve.append([step + 1, round(value, 6)])
            pbar.update(1)
            pbar.set_postfix(loss=f"{value:.4f}")
            done = step + 1
            if done % hp.checkpoint_every == 0 and done < hp.steps:
                checkpoints.save(checkpoint_dir, done, get_weights(), optimizer.state_dict(),
                                 {"loss_curve": curve, "eval_loss_start": eval_start, "seconds": elapsed()})
    eval_end = eval_loss()
    runtime = {"device": rt.device, "dtype": rt.dtype_name, "optimizer": rt.optimizer}
    return TrainResult(curve, hp.steps, round(elapsed(), 3), resumed, eval_start, eval_end, runtime)


# --- what every LoRA trainer shares -------------------------------------------------------


def step_batch(seed: int, step: int, batch_size: int, size: int) -> tuple[list[int], Any]:
    """The example indices of optimizer step ``step`` and the generator that draws its noise:
    seeded by the step, so a resumed run draws exactly what the uninterrupted one would."""
    import torch

    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    picks = torch.randint(0, max(size, 1), (min(batch_size, max(size, 1)),), generator=gen).tolist()
    return picks, gen


def lora_state(module: Any) -> dict[str, Any]:
    """The LoRA weights of a PEFT-wrapped module (what a checkpoint holds)."""
    from peft import get_peft_model_state_dict

    return dict(get_peft_model_state_dict(module))


def load_lora_state(module: Any, weights: dict[str, Any], device: str) -> None:
    """Put checkpointed LoRA weights back into a PEFT-wrapped module on ``device``."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(module, {k: v.to(device) for k, v in weights.items()})


class LoRATrainer:
    """What the four trainers share around their own loss: the step's batch, the fixed-batch
    loss measured before and after, reading and loading the LoRA weights, and ``train``.

    A trainer sets ``hp``, ``rt``, ``params`` (trainable) and ``encoded`` (examples ready for
    the loss), and supplies ``load``, ``encode``, ``lora_module`` (where the LoRA sits) and
    ``batch_loss(indices, gen, training=...)``; ``finish_result`` adds what its adapter records.
    """

    desc = "train"
    eval_draws = 4  #: noise draws the fixed-batch loss averages (one draw of timesteps is noisy)
    parts: tuple[str, ...] = ()  #: attributes holding the loaded model's parts (dropped by ``unload``)
    hp: Hyper
    rt: Runtime
    params: list[Any]
    encoded: list[Any]

    def load(self) -> None:
        raise NotImplementedError

    def encode(self, examples: list[Any]) -> None:
        raise NotImplementedError

    def lora_module(self) -> Any:
        """The module the LoRA is attached to (None until loaded)."""
        raise NotImplementedError

    def batch_loss(self, indices: list[int], gen: Any, *, training: bool) -> Any:
        raise NotImplementedError

    def step_loss(self, step: int) -> Any:
        """The loss of step ``step``'s batch (examples and noise from the seed and the step)."""
        picks, gen = step_batch(self.hp.seed, step, self.hp.batch_size, len(self.encoded))
        return self.batch_loss(picks, gen, training=True)

    def fixed_batch_loss(self) -> float:
        """The loss on a fixed batch (the first examples, fixed noise and times, no dropout),
        averaged over ``eval_draws`` draws: comparable before and after training."""
        import torch

        gen = torch.Generator().manual_seed(987_654_321)
        indices = list(range(min(len(self.encoded), 4)))
        with torch.no_grad():
            draws = [self.batch_loss(indices, gen, training=False).item() for _ in range(self.eval_draws)]
        return float(sum(draws) / len(draws))

    def lora_weights(self) -> dict[str, Any]:
        return lora_state(self.lora_module())

    def set_lora_weights(self, weights: dict[str, Any]) -> None:
        load_lora_state(self.lora_module(), weights, self.rt.device)

    def finish_result(self, result: TrainResult) -> TrainResult:
        return result

    def train(self, examples: list[Any], checkpoint_dir: Path) -> TrainResult:
        if self.lora_module() is None:
            self.load()
        self.encode(examples)
        result = run(desc=self.desc, hp=self.hp, rt=self.rt, params=self.params, loss_at=self.step_loss,
                     eval_loss=self.fixed_batch_loss, get_weights=self.lora_weights,
                     set_weights=self.set_lora_weights, checkpoint_dir=checkpoint_dir)
        return self.finish_result(result)

    def unload(self) -> None:
        """Drop the model's parts and the encoded examples, and give the memory back."""
        import gc

        import torch

        for name in self.parts:
            setattr(self, name, None)
        self.encoded = []
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def save_diffusers_lora(self, pipeline_cls: Any, out_dir: Path, *, layers_arg: str, weights_name: str,
                            config: dict[str, Any], convert: bool = False) -> Path:
        """Write the LoRA in diffusers' format (``pipeline_cls.load_lora_weights`` reads it) as
        ``weights_name``, and ``adapter_config.json`` (``config``); returns ``out_dir``."""
        import json

        out_dir.mkdir(parents=True, exist_ok=True)
        layers = {k: v.float().cpu() for k, v in self.lora_weights().items()}
        if convert:  # PEFT names to diffusers' (the UNet's LoRA)
            from diffusers.utils import convert_state_dict_to_diffusers

            layers = convert_state_dict_to_diffusers(layers)
        pipeline_cls.save_lora_weights(out_dir, **{layers_arg: layers}, weight_name=weights_name,
                                       safe_serialization=True)
        (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))
        return out_dir
