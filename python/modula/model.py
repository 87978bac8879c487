"""modula.Model: a backbone with attached modules, called like a torch module."""

from typing import NamedTuple, Optional

import torch

from . import _modula


class Output(NamedTuple):
    """What a forward pass returns.

    logits: [B, T, V] (causal / masked LM) or [B, L] (sequence classification); None for
        bare models. Prompt tuning prepends its virtual tokens: [B, P + T, V].
    hidden_states: [B, T, H], the last hidden state (after the final norm of decoders).
    """

    logits: Optional[torch.Tensor]
    hidden_states: torch.Tensor


def _as_parameter(t):
    # The same tensor (same storage and autograd identity as in C++), seen as a Parameter so
    # that torch.optim and nn.Module code accept it. Only the Python class changes.
    if type(t) is torch.Tensor:
        t.__class__ = torch.nn.Parameter
    return t


class Module:
    """A module set attached to a Model under a name (any registry type: LoRA, (IA)^3,
    prompt/prefix tuning, bottleneck adapters, Poly, MoE-LoRA, hypernetworks, fusions,
    mixed sets, compositions).

    >>> lora = model.attach("sst2", {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj", "v_proj"]})
    >>> lora.scale(0.5); lora.disable(); lora.enable(); lora.save("out/sst2")
    """

    def __init__(self, model, name):
        self._model = model
        self.name = name

    def __repr__(self):
        return f"modula.Module({self.name!r}, {self.peft_type})"

    @property
    def info(self):
        """dict: name, peft_type, config, num_parameters, mergeable, enabled, sites."""
        return self._model._core.module_info(self.name)

    @property
    def peft_type(self):
        """adapter_config.json's peft_type ("LORA", "MODULA_BOTTLENECK", ...)."""
        return self.info["peft_type"]

    @property
    def config(self):
        """The set's adapter_config.json as a dict."""
        return self.info["config"]

    def enable(self):
        """Switch the set on (the default after attaching)."""
        self._model._core.set_enabled(self.name, True)

    def disable(self):
        """Switch the set off: the model behaves as if it were absent."""
        self._model._core.set_enabled(self.name, False)

    def scale(self, value):
        """Set the set's strength (1 = as trained; LoRA scales its delta)."""
        self._model._core.set_scale(self.name, float(value))

    def merge(self):
        """Fold the set into the base weights (modula.ConfigError if it cannot be)."""
        self._model._core.merge(self.name)

    def unmerge(self):
        """Undo merge()."""
        self._model._core.unmerge(self.name)

    def remove(self):
        """Detach the set from the model."""
        self._model.remove(self.name)

    def save(self, path):
        """Write the folder the CLI writes (adapter_config.json + adapter_model.safetensors;
        PEFT loads PEFT types)."""
        self._model._core.save_module(self.name, str(path))

    def named_parameters(self):
        """[(name, Parameter)] of this set, the tensors modula computes with."""
        return [(n, _as_parameter(t)) for n, t in self._model._core.module_parameters(self.name)]

    def parameters(self):
        """The set's parameters as torch.nn.Parameter (shared with C++, no copies)."""
        return [p for _, p in self.named_parameters()]


class Model:
    """A backbone (Llama/Qwen2/Mistral, GPT-2, BERT/RoBERTa/XLM-R) and the module sets
    attached to it. Made by modula.load_model.

    >>> model = modula.load_model("tests/fixtures/hf/models/llama")
    >>> out = model(torch.tensor([[1, 2, 3]]))          # out.logits [1, 3, V]
    >>> model.attach("a", "adapters/a")                  # any module folder
    >>> opt = torch.optim.AdamW(model.parameters(), lr=1e-3)   # module parameters only

    Routing metadata goes in as keyword arguments, one id per row ([B] int64 tensors, or
    lists; a list of names for a mixed set's key), e.g. model(ids, task=torch.tensor([0, 2]))
    or, after model.mix(["a", "b"]), model(ids, adapter=["a", "__base__"]).
    """

    def __init__(self, core):
        self._core = core
        self._mixed = {}  # routing key -> mixed set name (for rows given by name)
        self._tokenizer = None

    def __repr__(self):
        return f"modula.Model({self._core.path!r}, {self.model_type}, modules={self._core.module_names()})"

    path = property(lambda self: self._core.path, doc="The folder the model was loaded from.")
    config = property(lambda self: self._core.config, doc="config.json as a dict.")
    model_type = property(lambda self: self._core.model_type, doc="config.json's model_type.")
    training = property(lambda self: self._core.training, doc="True in training mode (dropout on).")

    def _ids(self, key, value):
        if isinstance(value, torch.Tensor):
            return value
        if value and all(isinstance(v, str) for v in value):
            if key not in self._mixed:
                raise _modula.ConfigError(f"[python] rows of '{key}' given by name, but no mixed set routes by '{key}'")
            return self._core.row_ids(self._mixed[key], list(value))
        return torch.tensor(value, dtype=torch.int64)

    def __call__(self, input_ids, attention_mask=None, *, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, **metadata):
        """Forward pass with every enabled module set: input_ids [B, T] int64,
        attention_mask [B, S] (1 = attend); **metadata: per-row routing ids. Returns Output."""
        meta = {k: self._ids(k, v) for k, v in metadata.items()} if metadata else {}
        logits, hidden = self._core.forward(input_ids, attention_mask, token_type_ids, position_ids,
                                            inputs_embeds, meta)
        return Output(logits, hidden)

    forward = __call__

    @property
    def tokenizer(self):
        """The model folder's tokenizer (tokenizer.json or tokenizer.model), loaded once."""
        if self._tokenizer is None:
            from . import Tokenizer
            self._tokenizer = Tokenizer(self.path)
        return self._tokenizer

    def generate(self, prompt, max_new_tokens=32, *, temperature=0.0, top_k=0, top_p=1.0, seed=0,
                 stop_ids=None, on_token=None, **metadata):
        """Decode with the KV cache: greedy (temperature 0) or sampled (top_k, top_p, seed).
        prompt: token ids (list or 1-D tensor) -> the new ids; or text (needs a tokenizer in the
        model folder) -> the new text. stop_ids default to the config's eos ids; on_token(id)
        sees each id as it is chosen and may return False to stop."""
        text = isinstance(prompt, str)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False) if text else [int(i) for i in prompt]
        meta = {k: self._ids(k, v) for k, v in metadata.items()}
        out = self._core.generate(ids, max_new_tokens, temperature, top_k, top_p, seed, stop_ids, meta, on_token)
        return self.tokenizer.decode(out) if text else out

    def attach(self, name, source, *, scale=1.0, task=-1, trainable=True):
        """Attach a module set as `name`: source is a module folder of any registry type
        (PEFT or MODULA_* adapter_config.json) or a fresh config dict with "peft_type".
        task: the task of hypernetwork sets (-1: per row, from metadata). Returns a Module."""
        self._core.attach(name, source, scale, task, trainable)
        return Module(self, name)

    def module(self, name):
        """The attached set `name` (modula.ConfigError if absent)."""
        self._core.module_info(name)
        return Module(self, name)

    @property
    def modules(self):
        """{name: Module} of the attached sets, in attach order."""
        return {n: Module(self, n) for n in self._core.module_names()}

    def remove(self, name):
        """Detach the set `name`."""
        self._core.remove(name)
        self._mixed = {k: v for k, v in self._mixed.items() if v != name}

    def mix(self, names, name="mixed", key="adapter", lora_dtype=None):
        """Serve attached sets in one batch, each row routed by name: the sets are consumed
        into one mixed set; then model(ids, adapter=["a", "__base__", "b"]) (or [B] ids).
        lora_dtype="bfloat16" stores the LoRA weights in bf16 (half the memory and the bytes a
        decode step reads), "int8" in int8 with one scale per row (a quarter; the set's
        parameters are then those int8 values, their scales are not parameters); outputs move
        by that rounding of the adapter weights."""
        self._core.mix(list(names), name, key, lora_dtype or "")
        self._mixed[key] = name
        return Module(self, name)

    def compose(self, spec, name="compose", *, modules=None, fusion=None):
        """Apply a composition spec over attached sets, e.g. "stack(lang, fuse(a, b))" or
        "route(task, a, b)" (docs/composition.md); modules: {name: folder} to attach first.
        Returns the composition as a Module (route(key, ...) reads metadata `key`)."""
        for n, folder in (modules or {}).items():
            self.attach(n, folder)
        self._core.compose(spec, name, fusion)
        return Module(self, name)

    def merge_adapters(self, names, weights, name="merged", *, combination_type="svd", density=None,
                       majority_sign_method="total", svd_rank=0, svd_clamp=None, seed=0):
        """Merge attached LoRA sets into a new LoRA set `name` (PEFT's add_weighted_adapter:
        linear, cat, svd, ties, dare_linear, dare_ties, magnitude_prune and *_svd). The inputs
        stay attached; disable or remove them to run the merge alone."""
        self._core.merge_adapters(list(names), [float(w) for w in weights], name, combination_type, density,
                                  majority_sign_method, svd_rank, svd_clamp, seed)
        return Module(self, name)

    def named_parameters(self, trainable_only=True):
        """[(name, Parameter)]: backbone names as in the HF state dict, modules at sites as
        "<site>.adapters.<set>.<param>". By default only those that require grad (the
        backbone is frozen by load_model)."""
        return [(n, _as_parameter(t)) for n, t in self._core.named_parameters()
                if t.requires_grad or not trainable_only]

    def parameters(self, trainable_only=True):
        """The trainable parameters as torch.nn.Parameter: the tensors modula computes with,
        so autograd through model(...) reaches them and torch.optim updates them in place."""
        return [p for _, p in self.named_parameters(trainable_only)]

    def state_dict(self):
        """The backbone's HF state dict {name: tensor} (merged sets included)."""
        return dict(self._core.state_dict())

    def train(self, mode=True):
        """Training mode (dropout on) for the backbone and its modules; returns self."""
        self._core.set_training(mode)
        return self

    def eval(self):
        """Inference mode (the state after load_model); returns self."""
        return self.train(False)

    def freeze_backbone(self):
        """requires_grad = False for every backbone weight (load_model does it by default)."""
        self._core.freeze_backbone()

    def save(self, path):
        """Write an HF model folder (config.json + model.safetensors) transformers loads."""
        self._core.save(str(path))
