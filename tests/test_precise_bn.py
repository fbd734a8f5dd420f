"""Precise BatchNorm: recomputed statistics make eval mode match train mode on the same data."""
from types import SimpleNamespace

import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn

from yolopose.callbacks import PreciseBatchNorm, recompute_batchnorm_stats
from yolopose.ema import ModelEMA
from yolopose.nn.blocks import ConvBnAct


def test_eval_matches_train_mode_after_recompute() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(ConvBnAct(3, 16, 3, 2), ConvBnAct(16, 32, 3, 2), ConvBnAct(32, 32, 3)).eval()
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        stale = net(x)  # running statistics still at their initial mean 0 / var 1
        train_out = net.train()(x)
    net.eval()
    assert recompute_batchnorm_stats(net, [x]) == 1
    with torch.no_grad():
        fresh = net(x)
    assert not any(m.training for m in net.modules())
    assert all(m.bn.momentum == 0.03 for m in net)
    # Only the unbiased-variance correction (N / (N - 1), N >= 1024 here) separates the two.
    err_fresh, err_stale = (fresh - train_out).abs().max(), (stale - train_out).abs().max()
    assert err_fresh < 1e-2 and err_stale > 20 * err_fresh


def test_average_over_batches_and_nothing_to_do() -> None:
    bn = nn.BatchNorm1d(2)
    a, b = torch.randn(8, 2), torch.randn(8, 2) + 3
    recompute_batchnorm_stats(bn, [a, b])
    assert torch.allclose(bn.running_mean, (a.mean(0) + b.mean(0)) / 2, atol=1e-6)
    before = bn.running_mean.clone()
    assert recompute_batchnorm_stats(bn, []) == 0 and torch.equal(bn.running_mean, before)
    assert bn.training  # a module that was in train mode stays in train mode


def _trainer(fn: TrainerFn, sanity: bool = False) -> SimpleNamespace:
    return SimpleNamespace(sanity_checking=sanity, state=SimpleNamespace(fn=fn))


def test_callback_recomputes_the_evaluated_ema_copy_from_recent_batches() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    ema = ModelEMA(model)
    module = SimpleNamespace(inference_model=ema.module, to_input=lambda im: im.float() / 255)
    cb = PreciseBatchNorm(num_batches=2)
    images = [torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8) for _ in range(3)]
    for i, im in enumerate(images):
        cb.on_train_batch_end(None, module, None, {"images": im}, i)
    bn = ema.module[1]
    cb.on_validation_epoch_start(_trainer(TrainerFn.VALIDATING), module)  # `validate`: no training batches
    cb.on_validation_epoch_start(_trainer(TrainerFn.FITTING, sanity=True), module)
    assert torch.equal(bn.running_mean, torch.zeros(4))
    cb.on_validation_epoch_start(_trainer(TrainerFn.FITTING), module)
    with torch.no_grad():
        means = [ema.module[0](im.float() / 255).mean((0, 2, 3)) for im in images[1:]]  # the last two only
    assert torch.allclose(bn.running_mean, (means[0] + means[1]) / 2, atol=1e-5)
    assert not ema.module.training and torch.equal(model[1].running_mean, torch.zeros(4))


def test_a_frozen_backbone_keeps_its_statistics() -> None:
    """Without an EMA the evaluated network is the trained one: while ``freeze_backbone_epochs`` holds its backbone,
    recomputing the statistics must leave the backbone's as they are (and still refresh the rest)."""
    from yolopose.module import PoseModule

    module = PoseModule(num_keypoints=5, variant="n", width=0.125, kpt_head_depth=0, ema_decay=0.0,
                        freeze_backbone_epochs=2, channels_last=False)
    module.trainer = SimpleNamespace(current_epoch=0)   # within the frozen epochs
    assert module.frozen_statistics() == ["backbone"]
    net = module.inference_model
    backbone = {k: v.clone() for k, v in net.backbone.state_dict().items() if "running" in k}
    neck = {k: v.clone() for k, v in net.neck.state_dict().items() if "running_mean" in k}
    cb = PreciseBatchNorm(num_batches=1)
    cb.on_train_batch_end(None, module, None, {"images": torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)}, 0)
    cb.on_validation_epoch_start(_trainer(TrainerFn.FITTING), module)
    after = net.backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in backbone.items())
    assert any(not torch.equal(net.neck.state_dict()[k], v) for k, v in neck.items())
