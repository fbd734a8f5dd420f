"""Fine-tuning vs training from scratch: the same steps on a small K = 5 keypoint set, from a K = 17 checkpoint
(``--model.init_from``) and from a fresh initialisation.

    python -m benchmarks.fine_tune --init runs/demo/lightning_logs/version_0/checkpoints/best-epoch7.ckpt
    python -m benchmarks.fine_tune --pretrain-epochs 2      # no checkpoint at hand: pretrain one first (slow)

The "custom" set: a synthetic people set with another seed than the demo's (other people, poses, backdrops),
cut down to 5 of its 17 keypoints (nose, wrists, ankles) and ``--train`` images: a new keypoint definition, as
a user's own data would bring. Both runs use the checkpoint's architecture and the demo's training recipe
(AdamW, lr 0.004, EMA), ``--epochs`` epochs at batch 8 and 192 px, the same seed, and score the same
validation images. Prints one Markdown table; the figures in docs/fine-tuning.md come from it.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import Table, load_note, print_table

SUBSET = (0, 9, 10, 15, 16)
"""COCO person keypoints kept: nose, left/right wrist, left/right ankle."""
ARCH = ("variant", "num_levels", "anchors", "kpt_head_depth", "act", "depth", "width")


def keypoint_subset(src: Path, dst: Path, keep: tuple[int, ...] = SUBSET) -> None:
    """Write COCO keypoints JSON ``src`` as ``dst`` with only the keypoints ``keep`` (names, skeleton, counts)."""
    coco = json.loads(src.read_text())
    for cat in coco["categories"]:
        cat["keypoints"] = [cat["keypoints"][i] for i in keep]
        old = {k + 1: n + 1 for n, k in enumerate(keep)}
        cat["skeleton"] = [[old[a], old[b]] for a, b in cat.get("skeleton", []) if a in old and b in old]
    for ann in coco["annotations"]:
        kp = ann.get("keypoints") or [0] * 51
        ann["keypoints"] = [v for i in keep for v in kp[3 * i:3 * i + 3]]
        ann["num_keypoints"] = sum(1 for i in range(len(keep)) if ann["keypoints"][3 * i + 2] > 0)
    dst.write_text(json.dumps(coco))


def make_target(root: Path, num_train: int, num_val: int, seed: int) -> dict[str, str]:
    """The K = 5 set under ``root``: the ``data`` section of a config."""
    from yolopose.synthetic import SyntheticConfig, ensure_synthetic_dataset

    paths = ensure_synthetic_dataset(SyntheticConfig(root=str(root / "cache"), num_train=num_train,
                                                     num_val=num_val, seed=seed))
    keypoint_subset(paths.train_ann, root / "train_k5.json")
    keypoint_subset(paths.val_ann, root / "val_k5.json")
    return {"format": "coco", "train_ann": str(root / "train_k5.json"), "train_images": str(paths.train_images),
            "val_ann": str(root / "val_k5.json"), "val_images": str(paths.val_images)}


def fit(root: Path, name: str, data: dict, model: dict, epochs: int) -> tuple[dict, float]:
    """One ``train.py fit`` run; returns its last ``metrics.json`` and its wall time."""
    from yolopose.cli import main

    cfg = {"seed_everything": 0,
           "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": epochs, "precision": 32,
                       "default_root_dir": str(root / name), "enable_progress_bar": False,
                       "num_sanity_val_steps": 0, "check_val_every_n_epoch": epochs, "log_every_n_steps": 10},
           "model": {"optimizer": "adamw", "lr": 0.004, "warmup_epochs": 1, "warmup_min_steps": 20,
                     "ema_decay": 0.998, "ema_tau": 200, **model},
           "data": {**data, "image_size": 192, "batch_size": 8, "num_workers": 0, "scale": [0.5, 1.25]}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    main(["fit", "--config", str(path)])
    seconds = time.perf_counter() - t0
    out = sorted((root / name / "lightning_logs").glob("version_*/metrics.json"))[-1]
    return json.loads(out.read_text()), seconds


def pretrain(root: Path, epochs: int) -> Path:
    """A K = 17 checkpoint from the demo config run for ``epochs`` epochs (its own cache under ``root``)."""
    from yolopose.cli import DEMO_CONFIG, main

    main(["fit", "--config", str(DEMO_CONFIG), "--trainer.max_epochs", str(epochs),
          "--trainer.default_root_dir", str(root / "pretrain"), "--trainer.enable_progress_bar", "false",
          "--data.synthetic.root", str(root / "pretrain_cache")])
    return sorted((root / "pretrain").glob("lightning_logs/version_*/checkpoints/best-epoch*.ckpt"))[-1]


def run(init: Path | None, pretrain_epochs: int, epochs: int, num_train: int, num_val: int, seed: int,
        workdir: Path, freeze: int = 0) -> Table:
    from yolopose.checkpoint import checkpoint_hparams

    notes: list[str] = []
    with load_note(notes):
        if init is None:
            init = pretrain(workdir, pretrain_epochs)
        hp = checkpoint_hparams(init)
        arch = {k: hp[k] for k in ARCH if k in hp and hp[k] is not None}
        data = make_target(workdir, num_train, num_val, seed)
        rows = []
        runs = [("scratch", "scratch", {}), ("init_from", "init_from", {"init_from": str(init)})]
        if freeze:
            runs.append((f"init_from + freeze_backbone_epochs {freeze}", "frozen",
                         {"init_from": str(init), "freeze_backbone_epochs": freeze}))
        for name, folder, extra in runs:
            metrics, seconds = fit(workdir, folder, data, {**arch, **extra}, epochs)
            rows.append([name, metrics["global_step"], f"{metrics['kpt_AP']:.4f}",
                         f"{metrics['kpt_AP_labelled_imgs']:.4f}", f"{metrics['box_AP']:.4f}", f"{seconds:.0f}"])
    steps = rows[0][1]
    return Table(f"Fine-tuning vs scratch: K=5 synthetic set (seed {seed}, {num_train} train / {num_val} val images), "
                 f"{steps} steps, batch 8, 192 px",
                 ["start", "steps", "kpt_AP", "kpt_AP_labelled_imgs", "box_AP", "wall s"], rows,
                 [f"init_from: {init} (variant {hp.get('variant')}, K={hp.get('num_keypoints')}, "
                  f"{hp.get('kpt_head_depth')} keypoint-head blocks)", *notes])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", type=Path, help="a K=17 yolopose checkpoint (default: pretrain one)")
    p.add_argument("--pretrain-epochs", type=int, default=2, help="demo epochs when --init is not given")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train", type=int, default=160, help="training images of the K=5 set")
    p.add_argument("--val", type=int, default=60)
    p.add_argument("--seed", type=int, default=7, help="the K=5 set's synthetic seed (the demo's is 0)")
    p.add_argument("--freeze", type=int, default=0, help="also a run with the backbone frozen this many epochs")
    p.add_argument("--workdir", type=Path, help="keep runs here (default: a temporary folder)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = a.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        print_table(run(a.init, a.pretrain_epochs, a.epochs, a.train, a.val, a.seed, workdir, a.freeze))


if __name__ == "__main__":
    main()
