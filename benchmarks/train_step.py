"""Training step throughput and peak memory: forward + PoseLoss + backward + SGD step + EMA update.

    python -m benchmarks.train_step [--quick] [--configs n320,s640x8] [--threads 1] [--device cpu|cuda]
                                    [--amp bf16|fp16] [--channels-last] [--no-memory] [--no-step]

1. images/s of one training step (the compute of ``PoseModule.training_step`` + its optimiser step and
   EMA update, with ``PoseModule``'s default model, loss and optimiser, without Lightning's logging), in the default memory format and in ``channels_last``,
   interleaved run by run in one process so both see the same machine load; beside the FLOP floor:
   3 x forward GFLOPs (forward + backward ~ 2 x forward) / a 3x3 conv's GFLOP/s measured in the same run.
2. The loss alone (``PoseLoss`` forward + backward on the model's detached raw maps, assignment included),
   with the step's targets and with a crowded batch (15-30 people per image): the part of the step this
   project's own Python drives (the rest is convolutions).
3. Peak memory of a step: a fresh subprocess per configuration builds the model and a batch, then runs a
   warm-up step and one more. CPU: peak resident set size during the two steps (Linux ``VmHWM`` after
   resetting it through ``/proc/self/clear_refs``; ``ru_maxrss`` elsewhere) minus the resident size before;
   CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before.

Batches are synthetic: uint8 noise images and 1-6 people per image with K = 17 (the step's time does not
depend on the pixels). ``--device cuda`` times with ``torch.cuda.synchronize``; ``--amp`` wraps forward and
loss in ``torch.autocast`` (the loss itself computes in float32), fp16 with a ``GradScaler``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.common import (Config, Table, amp_dtype, autocast, load_note, print_table, reference_conv_rate,
                               set_threads, synchronize, times, wall_and_cpu_times)

K = 17


def synthetic_batch(batch: int, size: int, k: int = K, seed: int = 0, device: str = "cpu",
                    people: tuple[int, int] = (1, 6)) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images ``(B, 3, S, S)`` and targets ``(T, 6 + 3K)`` (the collate format): ``people`` (min, max)
    people per image, boxes 5-60 % of the image, keypoints inside their box, visibility 0/1/2 (0: zeroed)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
    rows = []
    for b in range(batch):
        for _ in range(int(torch.randint(people[0], people[1] + 1, (1,), generator=g))):
            wh = (torch.rand(2, generator=g) * 0.55 + 0.05) * size
            cxy = wh / 2 + torch.rand(2, generator=g) * (size - wh)
            kxy = cxy + (torch.rand(k, 2, generator=g) - 0.5) * wh
            v = torch.randint(0, 3, (k, 1), generator=g).float()
            kpt = torch.cat((kxy * (v > 0), v), 1)
            rows.append(torch.cat((torch.tensor([float(b), 0.0]), cxy, wh, kpt.reshape(-1))))
    return images.to(device), torch.stack(rows).to(device)


class StepRunner:
    """The model, criterion, SGD optimiser (``build_optimizer``, its parameter groups) and EMA of a default
    ``PoseModule``, on ``device``.

    Built from the same parts with the same defaults as ``PoseModule.__init__`` (``YOLOPose``, ``PoseLoss``,
    ``ModelEMA``), without importing Lightning (2-3 s of start-up in every memory subprocess).
    ``step()`` runs uint8 -> float input, forward + loss under ``autocast`` (when ``amp``), backward,
    optimiser step, ``zero_grad`` and the EMA update; ``loss_only()`` runs the criterion + backward on
    fixed detached raw maps.
    """

    def __init__(self, variant: str, size: int, batch: int, device: str = "cpu", amp: str | None = None,
                 channels_last: bool = False, seed: int = 0) -> None:
        from yolopose.assigner import AnchorAssigner
        from yolopose.ema import ModelEMA
        from yolopose.geometry import default_sigmas
        from yolopose.loss import PoseLoss
        from yolopose.nn.model import YOLOPose
        from yolopose.optim import build_optimizer, parameter_groups

        torch.manual_seed(seed)
        model = YOLOPose(variant, num_keypoints=K)
        self.criterion = PoseLoss(num_keypoints=K, num_classes=1, assigner=AnchorAssigner(model.anchors, model.strides),
                                  sigmas=default_sigmas(K)).to(device)
        self.ema = ModelEMA(model).to(device)
        self.model = model.to(device).train()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.optimizer = build_optimizer("sgd", parameter_groups(self.model, 5e-4 * batch / 64), 0.01, 0.937, True)
        self.device, self.dtype = device, amp_dtype(amp)
        use_scaler = amp == "fp16" and torch.device(device).type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.images, self.targets = synthetic_batch(batch, size, seed=seed, device=device)
        self._raws: list[torch.Tensor] | None = None

    @staticmethod
    def to_input(images: torch.Tensor) -> torch.Tensor:
        """uint8 -> float [0, 1], as ``PoseModule.to_input``."""
        return images.float().div_(255)

    def step(self) -> float:
        """One training step; returns the loss (a host sync, as Lightning's logging of it would be)."""
        x = self.to_input(self.images).contiguous(memory_format=self.memory_format)
        with autocast(self.device, self.dtype):
            raws = self.model(x)
            loss, _ = self.criterion(raws, self.targets)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        return float(loss.detach())

    def loss_only(self, targets: torch.Tensor | None = None) -> None:
        """``PoseLoss`` forward + backward on the model's raw maps (computed once, detached)."""
        if self._raws is None:
            with torch.no_grad(), autocast(self.device, self.dtype):
                self._raws = [r.detach() for r in self.model(self.to_input(self.images))]
        raws = [r.requires_grad_() for r in self._raws]
        loss, _ = self.criterion(raws, self.targets if targets is None else targets)
        loss.backward()
        for r in raws:
            r.grad = None

    def num_positives(self, targets: torch.Tensor | None = None) -> int:
        targets = self.targets if targets is None else targets
        grids = [(r.shape[2], r.shape[3]) for r in self._raws or self.model(self.to_input(self.images))]
        return sum(int(lt.batch.numel()) for lt in self.criterion.assigner(targets.float(), grids))

    def forward_gflops(self) -> float:
        from yolopose.nn.complexity import count_macs

        return 2 * count_macs(self.model, self.images.shape[-1]) / 1e9


def step_rows(cfg: Config, configs: list[tuple[str, int, int]], repeats: int, warmup: int,
              conv_rate: float) -> tuple[list[list[object]], list[list[object]]]:
    """Rows of the step table and of the loss-alone table for ``(variant, size, batch)`` configurations."""
    step_table, loss_table = [], []
    for variant, size, batch in configs:
        runners = {fmt: StepRunner(variant, size, batch, cfg.device, cfg.amp, fmt == "channels_last")
                   for fmt in ("contiguous", "channels_last")}
        gflops = runners["contiguous"].forward_gflops()
        for runner in runners.values():
            for _ in range(warmup):
                runner.step()
        measured: dict[str, list[float]] = {fmt: [] for fmt in runners}
        for _ in range(repeats):      # interleaved: both formats see the same load
            for fmt, runner in runners.items():
                measured[fmt] += times(runner.step, repeats=1, warmup=0, device=cfg.device)
        t = {fmt: statistics.median(v) for fmt, v in measured.items()}
        floor = 3 * gflops * batch / conv_rate
        best = min(t.values())
        step_table.append([variant, size, batch, f"{t['contiguous'] * 1e3:.0f}", f"{batch / t['contiguous']:.2f}",
                           f"{t['channels_last'] * 1e3:.0f}", f"{batch / t['channels_last']:.2f}",
                           f"{t['contiguous'] / t['channels_last']:.2f}", f"{3 * gflops * batch:.1f}",
                           f"{floor * 1e3:.0f}", f"{best / floor:.2f}"])
        runner = runners["contiguous"]
        crowd = synthetic_batch(batch, size, seed=1, device=cfg.device, people=(15, 30))[1]
        for label, targets in (("1-6", runner.targets), ("15-30", crowd)):
            wall, cpu = wall_and_cpu_times(lambda r=runner, t=targets: r.loss_only(t), repeats=max(2 * repeats, 5), warmup=2,
                                           device=cfg.device)
            loss_ms = statistics.median(wall) * 1e3
            loss_table.append([variant, size, batch, label, int(targets.shape[0]), runner.num_positives(targets),
                               f"{loss_ms:.1f}", f"{min(wall) * 1e3:.1f}-{max(wall) * 1e3:.1f}",
                               f"{statistics.median(cpu) * 1e3:.1f}",
                               f"{loss_ms / (t['contiguous'] * 1e3) * 100:.1f} %"])
        del runners
        gc.collect()
    return step_table, loss_table


# --------------------------------------------------------------------------- peak memory (subprocess)
def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _max_rss_mib() -> float:
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024        # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def memory_child(variant: str, size: int, batch: int, device: str, amp: str | None, channels_last: bool) -> dict:
    """Build a runner, then measure the peak memory of a warm-up step + one step (runs in a fresh process)."""
    runner = StepRunner(variant, size, batch, device, amp, channels_last)
    params = sum(p.numel() * p.element_size() for p in runner.model.parameters()) / 2**20
    gc.collect()
    if torch.device(device).type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2**20
        runner.step()
        runner.step()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        method = "torch.cuda.max_memory_allocated"
    else:
        before = _status_mib("VmRSS") or _max_rss_mib()
        reset = _reset_peak_rss()
        before_peak = _max_rss_mib()
        runner.step()
        runner.step()
        hwm = _status_mib("VmHWM")
        peak = hwm if (reset and hwm is not None) else _max_rss_mib()
        method = "VmHWM after clear_refs" if reset and hwm is not None else "ru_maxrss"
        if not reset and before_peak > peak:            # cannot happen; guards a platform quirk
            peak = before_peak
    return {"before_mib": before, "peak_mib": peak, "params_mib": params, "method": method}


def memory_rows(cfg: Config, configs: list[tuple[str, int, int]]) -> tuple[list[list[object]], str]:
    """One fresh subprocess per configuration (``memory_child``); rows and the measuring method."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg.threads), MKL_NUM_THREADS=str(cfg.threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    rows, method = [], ""
    for variant, size, batch in configs:
        args = {"variant": variant, "size": size, "batch": batch, "device": cfg.device, "amp": cfg.amp,
                "channels_last": cfg.channels_last}
        proc = subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--memory-child", json.dumps(args),
                               "--threads", str(cfg.threads)], cwd=root, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory subprocess failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        method = r["method"]
        state = 3 * r["params_mib"]                                  # weights + grads + SGD momentum
        rows.append([variant, size, batch, f"{r['before_mib']:.0f}", f"{r['peak_mib']:.0f}",
                     f"{r['peak_mib'] - r['before_mib']:.0f}", f"{state:.0f}",
                     f"{batch * 3 * size * size * 4 / 2**20:.0f}"])
    return rows, method


# --------------------------------------------------------------------------- suite entry points
def configs_for(cfg: Config) -> list[tuple[str, int, int]]:
    return [("n", 320, 8)] if cfg.quick else [(v, s, 8) for v in "ns" for s in (320, 640)]


def parse_configs(text: str) -> list[tuple[str, int, int]]:
    """``"n320,s640x4"`` -> ``[("n", 320, 8), ("s", 640, 4)]`` (batch 8 unless ``xB``)."""
    out = []
    for item in text.split(","):
        head, _, b = item.strip().partition("x")
        out.append((head[0], int(head[1:]), int(b or 8)))
    return out


def run(cfg: Config, configs: list[tuple[str, int, int]] | None = None, repeats: int | None = None,
        warmup: int | None = None) -> list[Table]:
    """The training-step and loss tables (``python -m benchmarks --only train``)."""
    set_threads(cfg.threads)
    repeats = repeats or (3 if cfg.quick else 5)
    warmup = (1 if cfg.quick else 2) if warmup is None else warmup
    notes: list[str] = []
    with load_note(notes):
        rate = reference_conv_rate(cfg)
        steps, losses = step_rows(cfg, configs or configs_for(cfg), repeats, warmup, rate)
    where = f"{cfg.device}" + (f", autocast {cfg.amp}" if cfg.amp else "")
    return [
        Table(f"Training step ({where}, {cfg.threads} thread(s)): forward + loss + backward + SGD + EMA, median of "
              f"{repeats} after {warmup} warm-up",
              ["variant", "size", "batch", "ms/step", "img/s", "ms/step channels_last", "img/s channels_last",
               "channels_last speed-up", "step GFLOPs (3x fwd)", "FLOP floor ms", "best / floor"], steps,
              [(f"3x3 conv reference rate measured now: {rate:.0f} GFLOP/s; floor = 3 x forward GFLOPs x batch / "
               "that rate. Both memory formats are timed run by run, interleaved, in one process."), *notes]),
        Table("PoseLoss alone (assignment + loss forward + backward on the step's raw maps)",
              ["variant", "size", "batch", "people/image", "targets", "positives", "ms", "spread ms", "CPU ms",
               "share of step"], losses,
              ["Share of step: loss ms / the step's ms (default memory format)."]),
    ]


def run_memory(cfg: Config, configs: list[tuple[str, int, int]] | None = None) -> list[Table]:
    """The peak-memory table (``python -m benchmarks --only memory``)."""
    notes: list[str] = []
    with load_note(notes):
        rows, method = memory_rows(cfg, configs or configs_for(cfg))
    unit = "allocated" if torch.device(cfg.device).type == "cuda" else "RSS"
    return [Table(f"Peak memory of a training step ({cfg.device}{', autocast ' + cfg.amp if cfg.amp else ''}"
                  f"{', channels_last' if cfg.channels_last else ''}; fresh process, warm-up step + one step)",
                  ["variant", "size", "batch", f"{unit} before MiB", f"peak {unit} MiB", "step increase MiB",
                   "weights+grads+momentum MiB", "float input batch MiB"], rows,
                  [(f"Measured with {method}; the reference columns are what any SGD step must hold besides "
                   "activations."), *notes])]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="n at 320 only, 3 repeats")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=["bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true", help="memory measurement in channels_last")
    p.add_argument("--configs", help="e.g. n320,s640x4 (variant, size, x batch; default batch 8)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--no-step", action="store_true", help="only the peak-memory subprocesses")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    set_threads(a.threads)
    if a.memory_child:
        print(json.dumps(memory_child(**json.loads(a.memory_child))), flush=True)
        return
    cfg = Config(quick=a.quick, threads=a.threads, device=a.device, amp=a.amp, channels_last=a.channels_last)
    from benchmarks.common import machine_line

    print(machine_line(cfg))
    configs = parse_configs(a.configs) if a.configs else None
    for table in ([] if a.no_step else run(cfg, configs)) + ([] if a.no_memory else run_memory(cfg, configs)):
        print_table(table)


if __name__ == "__main__":
    main()
