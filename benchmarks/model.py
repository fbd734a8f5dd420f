"""Model size and eager latency: params and GMACs of every variant, eager forward latency of n and s.

    python -m benchmarks.model [--size 640] [--repeats 5] [--quick] [--threads 1] [--device cpu]

Each latency is shown beside its FLOP floor: model GFLOPs / a 3x3 conv's GFLOP/s measured in the same
run on the same threads, so the ratio says how far from the machine's conv throughput we are.
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.common import (Config, Table, amp_dtype, autocast, load_note, machine_line, median_time, print_table,
                               reference_conv_rate, set_threads)
from yolopose import VARIANTS, YOLOPose
from yolopose.nn.complexity import count_macs, count_parameters

PAPER_S6_GMACS = 10.2  # YOLO-Pose paper, YOLOv5s6-pose at 640x640


def complexity_rows(size: int, keypoints: int = 17, variants: str | None = None) -> list[list[object]]:
    """``[variant, params (M), GMACs]`` at ``size`` x ``size``."""
    rows = []
    for v in variants or VARIANTS:
        m = YOLOPose(v, num_keypoints=keypoints)
        rows.append([v, f"{count_parameters(m) / 1e6:.2f}", f"{count_macs(m, size) / 1e9:.2f}"])
    return rows


def latency_rows(variants: str, size: int, repeats: int, conv_rate: float, device: str = "cpu",
                 amp: str | None = None, channels_last: bool = False) -> list[list[object]]:
    """``[variant, size, ms, FLOP floor ms, ratio]`` of an eager batch-1 forward (inference mode)."""
    rows = []
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.rand(1, 3, size, size, device=device).contiguous(memory_format=fmt)
    for v in variants:
        m = YOLOPose(v).eval()
        gmacs = count_macs(m, size) / 1e9
        m = m.to(device).to(memory_format=fmt)
        with torch.inference_mode(), autocast(device, amp_dtype(amp)):
            t = median_time(lambda m=m: m(x), repeats=repeats, device=device)
        floor = 2 * gmacs / conv_rate
        rows.append([v, size, f"{t * 1e3:.1f}", f"{floor * 1e3:.1f}", f"{t / floor:.2f}"])
    return rows


def run(cfg: Config, size: int | None = None, repeats: int | None = None) -> list[Table]:
    """Complexity and eager-latency tables (``python -m benchmarks --only model``)."""
    set_threads(cfg.threads)
    size = size or (320 if cfg.quick else 640)
    repeats = repeats or (3 if cfg.quick else 5)
    notes: list[str] = []
    with load_note(notes):
        cx = complexity_rows(size, variants="ns" if cfg.quick else None)
        rate = reference_conv_rate(cfg)
        lat = latency_rows("n" if cfg.quick else "ns", size, repeats, rate, cfg.device, cfg.amp, cfg.channels_last)
    cx_notes = []
    if size == 640:
        s = count_macs(YOLOPose("s"), 640) / 1e9
        cx_notes.append(f"Reference: the paper's s6 pose model has {PAPER_S6_GMACS} GMACs at 640; ours s {s:.2f} "
                        f"({(s / PAPER_S6_GMACS - 1) * 100:+.1f} %).")
    where = cfg.device + (f", autocast {cfg.amp}" if cfg.amp else "") + (", channels_last" if cfg.channels_last else "")
    return [Table(f"Parameters and GMACs at {size}x{size} (P3-P6, K=17)", ["variant", "params (M)", "GMACs"], cx,
                  cx_notes),
            Table(f"Eager forward latency, batch 1 ({where}, {cfg.threads} thread(s), median of {repeats})",
                  ["variant", "size", "ms", "FLOP floor ms", "ratio"], lat,
                  [f"3x3 conv reference rate measured now: {rate:.0f} GFLOP/s.", *notes])]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="320 input, n and s only, fewer repeats")
    a = p.parse_args(argv)
    cfg = Config(quick=a.quick, threads=a.threads, device=a.device)
    print(machine_line(cfg))
    for table in run(cfg, None if a.quick else a.size, None if a.quick else a.repeats):
        print_table(table)


if __name__ == "__main__":
    main()
