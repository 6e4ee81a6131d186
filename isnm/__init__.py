"""ISNM + Gradual Surrogate Gradient spiking networks.

config     the training config: its dataclasses, validation into them, its hash, KEY=VALUE overrides (no torch)
metrics    the names of what training reports (no torch)
schedule   the surrogate's schedule: beta and alpha over training (no torch)
datafiles  data sets on disk: CIFAR's files found, fetched, read safely; a study's data check (no torch)
data       data sets as whole tensors on the device, augmentation as batched tensor ops
surrogate  the surrogate gradients and the spike op
neuron     the ISNM neuron and its kernels (eager, compiled)
bn_neuron  batch norm -> (max pool) -> ISNM as one op
conv       a convolution whose input is spikes, keeping one byte per spike for backward
models     the networks: tiny, VGG-small, ResNet-18; NetSpec, what every network is built for; yours, by name
layers     the public layers a spiking network is built from (the built-in ones are): SpikingNet, ISNM, BNISNM, ...
plugins    your own network or data set named in a config (module:callable, or an installed package's name)
activity   what a network does on a test pass: firing rates, synaptic operations, energy
kernels    what compiling the ISNM kernels costs and saves, measured: which one `kernel: auto` runs (no torch)
runtime    how a config runs on this machine: device, kernel, memory layout, precision, the prepared network
training   one training run, its optimizer step, its evaluation
__main__   the command line: python -m isnm --config FILE.yaml --set KEY=VALUE

The names below are this package's API. They load on first use, so `import isnm` and the torch-free modules
never load torch: a study file is checked without it.
"""
from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it; `metrics` is a module itself, its names read as metrics.TEST_ACC
EXPORTS = {
    **dict.fromkeys(("CONFIG_KEYS", "ConfigError", "TrainConfig", "check", "default_config", "flat", "join", "merged", "nested",
                     "parse_config", "parse_dataclass", "to_dict", "unknown_key_message", "config_hash",
                     "HASHED_WHEN_SET", "with_setting", "shown", "SurrogateConfig", "ARCHS", "DATASETS"), "isnm.config"),
    "metrics": "isnm.metrics",
    **dict.fromkeys(("surrogate_at", "betas_text"), "isnm.schedule"),
    **dict.fromkeys(("DataError", "check_data", "CLASSES"), "isnm.datafiles"),
    **dict.fromkeys(("Dataset", "Images", "load_dataset"), "isnm.data"),
    **dict.fromkeys(("PluginError", "PluginSource", "source_of", "is_reference", "check_sources"), "isnm.plugins"),
    **dict.fromkeys(("NetSpec", "SpikingNet", "network", "check_output", "BUILT_IN"), "isnm.models"),
    **dict.fromkeys(("MEASURED", "figures", "measured_source", "compile_note", "compile_seconds", "compile_seconds_here", "compiled_here",
                     "device_type_of", "kernel_for"), "isnm.kernels"),
    **dict.fromkeys(("resolve_device", "resolve_kernel", "channels_last", "precision_of", "reuse_freed_memory",
                     "prepared_model", "net_spec"), "isnm.runtime"),
    **dict.fromkeys(("train", "train_step", "TrainingDiverged", "evaluate", "recalibrate_batch_norm",
                     "EVAL_BATCH_SIZE"), "isnm.training"),
}
__all__ = list(EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(EXPORTS[name])
    return module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
