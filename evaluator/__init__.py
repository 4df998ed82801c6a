"""evaluator: `eval-seg`, scoring checkpoints or saved maps on the paper's benchmarks.

The benchmark datasets and their inference protocols (crop128 / short128) are benchdata's; the
U-Net, its checkpoints and inference rules segmodel's. `evaluator.metrics` is the public streaming
API (`SegmentationMetrics`) that the trainer's validation uses too.

Modules, one job each (importing the package loads neither torch nor TensorFlow):

- metrics:  streaming segmentation metrics (maxFβ, IoU, accuracy, MAE, S-, E-measure, weighted F),
            pure numpy (weighted F: scipy).
- protocols: evaluation protocols by name (paper, sod-toolkit): how maps and ground truth are
            prepared before the metrics, and which metrics each reports.
- wsol:     localisation metrics of Choe et al. 2020 (MaxBoxAcc, MaxBoxAccV2, PxAP), pure numpy.
- predict:  probability maps from a train-unet checkpoint (torch, lazily; --fg-prob softmax or
            sigmoid1) or a --pred-dir of PNGs.
- report:   terminal table, results.json, results.md, precision-recall plot, example figure.
- cli:      the click command `eval-seg` and the library function `evaluate(EvalConfig)`.
"""
