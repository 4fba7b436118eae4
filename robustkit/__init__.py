"""robustkit: GradAug training on few labels, FGSM sweeps and ImageNet-C style corruptions.

Public API (imported lazily, so ``import robustkit`` is cheap)::

    model, info = robustkit.load_checkpoint("runs/x/checkpoint.pt")
    model, info = robustkit.load_model("torchvision:resnet50", weights="r50.pth")   # any classifier
    data = robustkit.load_dataset("digits", "test")          # images uint8 NCHW, labels, classes
    records = robustkit.fgsm_sweep(model, data.images, data.labels, [0, 0.05, 0.1])
    fast = robustkit.CompiledEval(model)                     # TorchInductor-compiled, one batch size (--compile)
    x_c = robustkit.corrupt(x, "fog", severity=3, preset="cifar-10-c", seed=0)
    result = robustkit.fit(robustkit.TrainConfig(dataset="digits", labels=250), "runs/d250")  # .checkpoint, .test_acc
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "RobustkitError": "robustkit.errors",
    "TrainConfig": "robustkit.config",
    "load_dataset": "robustkit.data",
    "balanced_split": "robustkit.data",
    "create_model": "robustkit.models",
    "fit": "robustkit.train",
    "load_checkpoint": "robustkit.checkpoint",
    "load_model": "robustkit.sources.models",
    "find_checkpoints": "robustkit.checkpoint",
    "fgsm_sweep": "robustkit.attacks",
    "pgd_sweep": "robustkit.attacks",
    "corrupt": "robustkit.corruptions",
    "CORRUPTIONS": "robustkit.corruptions",
    "CompiledEval": "robustkit.compiling",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'robustkit' has no attribute {name!r}")
