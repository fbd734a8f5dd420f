"""Model size and CPU latency: params and GMACs of every variant, eager forward latency of n and s.

    python -m benchmarks.model [--size 640] [--repeats 5] [--quick]

Each latency is shown beside its FLOP floor: model GFLOPs / a 3x3 conv's GFLOP/s measured in the
same run on the same threads, so the ratio says how far from the machine's conv throughput we are.
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.common import conv3x3_gflops, median_time, print_table
from yolopose import VARIANTS, YOLOPose
from yolopose.nn.complexity import count_macs, count_parameters

PAPER_S6_GMACS = 10.2  # YOLO-Pose paper, YOLOv5s6-pose at 640x640


def complexity_rows(size: int, keypoints: int = 17) -> list[list[object]]:
    rows = []
    for v in VARIANTS:
        m = YOLOPose(v, num_keypoints=keypoints)
        rows.append([v, f"{count_parameters(m) / 1e6:.2f}", f"{count_macs(m, size) / 1e9:.2f}"])
    return rows


def latency_rows(variants: str, size: int, repeats: int, conv_rate: float) -> list[list[object]]:
    rows = []
    x = torch.rand(1, 3, size, size)
    for v in variants:
        m = YOLOPose(v).eval()
        gmacs = count_macs(m, size) / 1e9
        with torch.inference_mode():
            t = median_time(lambda: m(x), repeats=repeats)
        floor = 2 * gmacs / conv_rate
        rows.append([v, size, f"{t * 1e3:.1f}", f"{floor * 1e3:.1f}", f"{t / floor:.2f}"])
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smaller input and fewer repeats")
    a = p.parse_args(argv)
    size, repeats = (320, 3) if a.quick else (a.size, a.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print_table(f"Parameters and GMACs at {size}x{size} (P3-P6, K=17)", ["variant", "params (M)", "GMACs"],
                complexity_rows(size))
    if size == 640:
        s = count_macs(YOLOPose("s"), 640) / 1e9
        print(f"\nreference: paper's s6 pose model {PAPER_S6_GMACS} GMACs at 640; ours s {s:.2f} "
              f"({(s / PAPER_S6_GMACS - 1) * 100:+.1f} %)")
    rate = conv3x3_gflops()
    print(f"\n3x3 conv reference rate measured now: {rate:.0f} GFLOP/s")
    print_table("Eager forward latency, batch 1 (CPU)", ["variant", "size", "ms", "FLOP floor ms", "ratio"],
                latency_rows("ns", size, repeats, rate))


if __name__ == "__main__":
    main()
