"""The data layer: annotation files in, batches out. One image travels this way:

1. reader -- ``coco.CocoKeypoints`` or ``yolo_txt.YoloPoseTxt`` parses and validates a split once into a
   ``table.LabelTable`` (flat arrays) with its ``sample.DatasetInfo`` (K, names, skeleton, flip pairs,
   sigmas); ``reader.LabelledImages`` is what both offer. Bad input raises ``sample.DatasetError``.
2. sample -- ``LabelledImages.load(i)`` decodes the image (``image_io``) into a ``sample.Sample``: the image
   and its labels in original pixels.
3. augment -- ``augment.TrainAugment`` (mosaic, affine, flip with left/right swap, HSV) for training,
   ``transforms.letterbox`` for validation, turn samples into an ``Item`` (``sample.Item``): an S x S
   network input with its labels in input pixels.
4. item -- ``dataset.TrainDataset`` / ``dataset.ValDataset`` make one ``Item`` per index (with the
   per-worker random streams and the policy for unreadable images).
5. collate -- ``dataset.collate`` stacks items into ``images (B, 3, S, S)`` uint8, one ``targets (T, 6 + 3K)``
   tensor ``[batch_idx, cls, cx, cy, w, h, (x, y, v) * K]``, crowd ``ignore`` boxes and per-image ``meta``.

``datamodule.PoseDataModule`` wires this up for the trainer and publishes the dataset facts the model
needs. The synthetic people dataset is a separate package (``yolopose.synthetic``) that writes COCO files
this layer reads; the DataModule imports it only for ``format: synthetic``.
"""
