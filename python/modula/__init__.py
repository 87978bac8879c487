"""modula: modular deep learning (Pfeiffer et al., 2023) on a C++ engine.

A pretrained backbone plus modules of any type (LoRA, (IA)^3, prompt and prefix tuning,
bottleneck adapters, Poly, MoE-LoRA, hypernetworks, fusions), routed per row by metadata,
composed by specs, merged and trained. Tensors cross as torch.Tensor without copies.

>>> import modula, torch
>>> model = modula.load_model("tests/fixtures/hf/models/llama")
>>> model.attach("a", {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj", "v_proj"]})
>>> logits = model(torch.tensor([[1, 2, 3]])).logits

See docs/python.md.
"""

import os as _os

# Before libgomp starts (it reads the variable once, when torch loads): idle OpenMP threads
# sleep instead of spinning against OpenBLAS's threads (src/util/omp_wait_policy.cpp says why).
# No effect if torch was imported first.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch as _torch  # noqa: F401  (loads libtorch and torch.Tensor before the extension)

_shim = _os.path.join(_os.path.dirname(__file__), "libmodula_spm.so")
if _os.path.isfile(_shim):  # SentencePiece is loaded at run time from beside the package
    _os.environ.setdefault("MODULA_SPM_SHIM", _shim)

from . import _modula  # noqa: E402
from ._modula import ConfigError, Error, Tokenizer  # noqa: E402,F401
from .model import Model, Module, Output  # noqa: E402,F401

__version__ = _modula.__version__


def load_model(path, device="cpu", *, dtype=None, freeze_backbone=True):
    """Load an HF model folder (config.json + model.safetensors or shards) as a Model.

    device: "cpu" or "cuda[:N]"; dtype: None (fp32 on CPU, the checkpoint's half type on
    CUDA), "float32", "bfloat16" or "float16". The backbone is frozen unless
    freeze_backbone=False, so model.parameters() are the modules' only.
    Raises modula.Error / modula.ConfigError naming the file for a bad folder."""
    return Model(_modula.load_model(_os.fspath(path), str(device), dtype or "", freeze_backbone))


def train(config, data=None, *, callbacks=None, resume=False):
    """Run a training config (a .yaml/.json path or the same as a dict; docs/training.md).

    data: optional in-memory records {task: {"train": [dict, ...], "eval": [...]}} instead of
    the config's files. callbacks: a dict or object with on_step(dict), on_eval(dict),
    on_message(str), any of them optional; an exception raised in one stops the run.
    Returns a dict (steps, final_loss, eval metrics by task, continual results, output)."""
    def hook(name):
        if callbacks is None:
            return None
        return callbacks.get(name) if isinstance(callbacks, dict) else getattr(callbacks, name, None)

    if not isinstance(config, dict):
        config = _os.fspath(config)
    return _modula.train(config, data, hook("on_step"), hook("on_eval"), hook("on_message"), resume)


def merge_adapters(model, names, weights, name="merged", **options):
    """Merge LoRA sets attached to `model` into a new set (Model.merge_adapters)."""
    return model.merge_adapters(names, weights, name, **options)


def merge_models(recipe, output=None, *, base_dir="."):
    """Merge full models by a mergekit-style recipe (a .yaml/.json path or a dict; methods
    linear, task_arithmetic, ties, dare_linear, dare_ties, slerp, model_stock; docs/merging.md).
    Writes an HF folder to `output` (or the recipe's) and returns a report dict."""
    if not isinstance(recipe, dict):
        recipe = _os.fspath(recipe)
    return _modula.merge_models(recipe, _os.fspath(output) if output else "", _os.fspath(base_dir))


supported_model_types = _modula.supported_model_types
supported_module_types = _modula.supported_module_types
lora_combination_types = _modula.lora_combination_types
