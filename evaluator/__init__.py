"""evaluator: `eval-seg`, scoring checkpoints or saved maps on the paper's benchmarks.

The benchmark datasets and their input sizing are benchdata's; the U-Net, its checkpoints and
inference rules segmodel's; the metrics, the evaluation protocols (paper, sod-toolkit) and one
accumulator per kind of ground truth are scoring's, which the trainer's validation uses too.

Modules, one job each (importing the package loads neither torch nor TensorFlow):

- evaluation: the evaluation, one function per step: `evaluate(EvalConfig)` checks the request,
            resolves the datasets, scores every source on every dataset, summarises, writes.
- predict:  probability maps from a train-unet checkpoint (torch, lazily; --fg-prob softmax or
            sigmoid1) or a --pred-dir of PNGs, each with its ground truth (scoring.Truth).
- report:   terminal table, results.json, results.md, precision-recall plot, example figure.
- cli:      the click command `eval-seg`: flags in, `evaluate` called, the table printed.
"""
