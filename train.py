"""Train, validate or resume a yolopose model.

    python train.py                                   # the synthetic CPU demo (no arguments)
    python train.py fit --config coco_s_640            # a shipped config by name, or any YAML path
    python train.py validate --config ... --ckpt_path PATH
    python train.py fit --config ... --ckpt_path last # resume the newest run under default_root_dir
"""
from yolopose.cli import main

if __name__ == "__main__":
    main()
