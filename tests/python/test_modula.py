"""`import modula` against the fixtures (tests/fixtures/hf: HF transformers / PEFT outputs)
and against the C++ path (the modula CLI, when MODULA_CLI names it).

Run by CTest (python_modula) with PYTHONPATH=build/python; by hand:
    PYTHONPATH=build/python MODULA_CLI=build/apps/modula/modula python3 -m pytest tests/python
"""

import json
import os
import struct
import subprocess

import pytest
import torch

import modula

FIXTURES = os.environ.get("MODULA_FIXTURES",
                          os.path.join(os.path.dirname(__file__), "..", "fixtures"))
HF = os.path.join(FIXTURES, "hf")
LLAMA = os.path.join(HF, "models", "llama")
ADAPTERS = os.path.join(HF, "adapters")
MIXED = os.path.join(ADAPTERS, "llama-mixed")
TOL = dict(atol=1e-4, rtol=1e-4)

_DTYPES = {"F32": torch.float32, "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16}


def read_safetensors(path):
    """A plain reader (no modula code) for the fixtures' expected outputs."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for key, v in header.items():
        if key == "__metadata__":
            continue
        begin, end = v["data_offsets"]
        raw = bytearray(data[8 + n + begin:8 + n + end])
        out[key] = torch.frombuffer(raw, dtype=_DTYPES[v["dtype"]]).reshape(v["shape"]).clone()
    return out


def assert_close_masked(actual, expected, mask):
    """Compares [B, T, ...] outputs at real (mask = 1) positions only."""
    keep = mask.bool()
    torch.testing.assert_close(actual[keep], expected[keep], **TOL)


def lm_loss(logits, ids):
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))


@pytest.fixture
def llama():
    return modula.load_model(LLAMA)


@pytest.fixture(scope="module")
def expected():
    return read_safetensors(os.path.join(LLAMA, "expected.safetensors"))


def test_version_and_docs():
    assert isinstance(modula.__version__, str) and modula.__version__
    for obj in (modula.load_model, modula.train, modula.merge_models, modula.Model, modula.Model.attach,
                modula.Module.merge, modula.Tokenizer):
        assert obj.__doc__ and len(obj.__doc__.strip()) > 20, obj
    assert "LORA" in modula.supported_module_types()
    assert "llama" in modula.supported_model_types()


def test_logits_equal_reference(llama, expected):
    out = llama(expected["input_ids"], expected["attention_mask"])
    assert isinstance(out.logits, torch.Tensor) and out.logits.shape == expected["logits"].shape
    assert_close_masked(out.logits, expected["logits"], expected["attention_mask"])
    assert_close_masked(out.hidden_states, expected["last_hidden_state"], expected["attention_mask"])


def cli_generate(args):
    cli = os.environ.get("MODULA_CLI")
    if not cli:
        pytest.skip("MODULA_CLI not set (CTest sets it to the built modula CLI)")
    out = subprocess.run([cli, "generate", "-m", LLAMA, "--prompt-ids", "5,17,42", "-n", "8", "--ignore-eos"] + args,
                         check=True, capture_output=True, text=True).stdout
    return [int(t) for t in out.split()]


def test_generate_equals_cli(llama):
    ids = llama.generate([5, 17, 42], 8, stop_ids=[])
    assert len(ids) == 8
    assert ids == cli_generate([])
    seen = []
    llama.generate([5, 17, 42], 8, stop_ids=[], on_token=lambda t: seen.append(t) or len(seen) < 3)
    assert seen == ids[:3]


def test_lora_equals_peft_and_cli(llama):
    ref = read_safetensors(os.path.join(ADAPTERS, "llama-lora", "expected.safetensors"))
    base = llama(ref["input_ids"], ref["attention_mask"]).logits
    lora = llama.attach("lora", os.path.join(ADAPTERS, "llama-lora"))
    assert lora.peft_type == "LORA"
    out = llama(ref["input_ids"], ref["attention_mask"]).logits
    assert_close_masked(out, ref["logits"], ref["attention_mask"])
    assert not torch.allclose(out, base)
    assert llama.generate([5, 17, 42], 8, stop_ids=[]) == cli_generate(["-a", os.path.join(ADAPTERS, "llama-lora")])
    lora.scale(0.0)
    torch.testing.assert_close(llama(ref["input_ids"], ref["attention_mask"]).logits, base, **TOL)
    lora.scale(1.0)
    lora.disable()
    torch.testing.assert_close(llama(ref["input_ids"], ref["attention_mask"]).logits, base, **TOL)
    lora.enable()
    lora.merge()  # folded into the weights: same outputs
    assert_close_masked(llama(ref["input_ids"], ref["attention_mask"]).logits, ref["logits"], ref["attention_mask"])
    lora.unmerge()
    lora.remove()
    assert llama.modules == {}
    torch.testing.assert_close(llama(ref["input_ids"], ref["attention_mask"]).logits, base, **TOL)


def test_bottleneck_adapter(llama, expected):
    ids, mask = expected["input_ids"], expected["attention_mask"]
    base = llama(ids, mask).logits
    adapter = llama.attach("bn", {"peft_type": "MODULA_BOTTLENECK", "config": "pfeiffer", "reduction_factor": 4})
    assert adapter.peft_type == "MODULA_BOTTLENECK"
    assert adapter.info["sites"] > 0
    torch.testing.assert_close(llama(ids, mask).logits, base, **TOL)  # adapter_up = 0: identity at init
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert not torch.allclose(llama(ids, mask).logits, base, **TOL)
    with pytest.raises(modula.ConfigError, match="merge"):
        adapter.merge()


def test_mixed_batch_routing_metadata(llama):
    case = json.load(open(os.path.join(MIXED, "case.json")))
    ref = read_safetensors(os.path.join(MIXED, "expected.safetensors"))
    for name in ("a0", "a1", "a2"):
        llama.attach(name, os.path.join(MIXED, name))
    llama.mix(["a0", "a1", "a2"])
    rows = case["adapter_per_row"]
    out = llama(ref["input_ids"], ref["attention_mask"], adapter=rows).logits
    assert_close_masked(out, ref["logits"], ref["attention_mask"])
    # The same routing as a tensor of row ids, and a row without modules.
    ids = llama._core.row_ids("mixed", rows)
    assert ids.dtype == torch.int64 and ids.shape == (3,)
    torch.testing.assert_close(llama(ref["input_ids"], ref["attention_mask"], adapter=ids).logits, out)
    base_row = llama(ref["input_ids"], ref["attention_mask"], adapter=["__base__"] + rows[1:]).logits
    plain = modula.load_model(LLAMA)(ref["input_ids"][:1], ref["attention_mask"][:1]).logits
    assert_close_masked(base_row[:1], plain, ref["attention_mask"][:1])


def mixed_with_stored_banks(llama, lora_dtype, stored_as):
    """The mixed fixture's sets mixed with their LoRA banks stored in lora_dtype: checks the
    stored parameters' dtype and returns the largest logit difference from the fp32 reference."""
    ref = read_safetensors(os.path.join(MIXED, "expected.safetensors"))
    rows = json.load(open(os.path.join(MIXED, "case.json")))["adapter_per_row"]
    for name in ("a0", "a1", "a2"):
        llama.attach(name, os.path.join(MIXED, name))
    llama.mix(["a0", "a1", "a2"], lora_dtype=lora_dtype)
    params = dict(llama._core.module_parameters("mixed"))
    assert params and all(p.dtype == stored_as for p in params.values())
    out = llama(ref["input_ids"], ref["attention_mask"], adapter=rows).logits
    assert out.dtype == torch.float32
    keep = ref["attention_mask"].bool()
    return (out - ref["logits"])[keep].abs().max().item()


def test_mixed_batch_with_bf16_lora_banks(llama):
    diff = mixed_with_stored_banks(llama, "bfloat16", torch.bfloat16)
    assert 0 < diff < 0.1  # the rounding of the adapter weights, not float32 rounding
    with pytest.raises(ValueError, match="lora_dtype: 'bf16' is not float32, bfloat16, float16 or int8"):
        llama.mix(["mixed"], lora_dtype="bf16")  # the dtype is checked before the names


def test_mixed_batch_with_int8_lora_banks(llama):
    diff = mixed_with_stored_banks(llama, "int8", torch.int8)
    # The rounding of the adapter weights to 255 levels per row: on these random fixtures the
    # adapters move logits by up to 4.1, bf16 rounding by < 0.1, int8 by 0.39 (measured).
    assert 0 < diff < 0.5


def test_poly_task_ids_as_tensor(llama):
    ref = read_safetensors(os.path.join(ADAPTERS, "llama-poly", "expected.safetensors"))
    llama.attach("poly", os.path.join(ADAPTERS, "llama-poly"))
    out = llama(ref["input_ids"], ref["attention_mask"], task=ref["task_ids"]).logits
    assert_close_masked(out, ref["logits"], ref["attention_mask"])


def test_composition_route_by_task(llama):
    ref = read_safetensors(os.path.join(MIXED, "expected.safetensors"))
    ids, mask = ref["input_ids"], ref["attention_mask"]
    alone = []
    for name in ("a0", "a1"):
        m = modula.load_model(LLAMA)
        m.attach(name, os.path.join(MIXED, name))
        alone.append(m(ids, mask).logits)
    llama.compose("route(task, a0, a1)", modules={n: os.path.join(MIXED, n) for n in ("a0", "a1")})
    out = llama(ids, mask, task=torch.tensor([1, 0, 1])).logits
    assert_close_masked(out[0:1], alone[1][0:1], mask[0:1])
    assert_close_masked(out[1:2], alone[0][1:2], mask[1:2])
    with pytest.raises(modula.Error, match="task"):
        llama(ids, mask)  # route(task, ...) without task ids


def test_user_optimizer_loop(llama, expected):
    ids, mask = expected["input_ids"], expected["attention_mask"]
    llama.attach("lora", {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    llama.attach("bn", {"peft_type": "MODULA_BOTTLENECK", "config": "pfeiffer", "reduction_factor": 4})
    params = llama.parameters()
    assert params and all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in params)
    named = dict(llama.named_parameters())
    assert all(".adapters.lora." in n or ".adapters.bn." in n for n in named), list(named)
    backbone = {k: v.clone() for k, v in llama.state_dict().items()}
    before = {n: p.detach().clone() for n, p in named.items()}
    llama.train()
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = lm_loss(llama(ids, mask).logits, ids)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    llama.eval()
    with torch.no_grad():
        final = lm_loss(llama(ids, mask).logits, ids).item()
    assert final < losses[0], (losses, final)
    for n, p in named.items():
        assert not torch.equal(p.detach(), before[n]), f"{n} did not change"
    for k, v in llama.state_dict().items():
        assert torch.equal(v, backbone[k]), f"backbone weight {k} changed"


def test_save_reload_equal(llama, expected, tmp_path):
    ids, mask = expected["input_ids"], expected["attention_mask"]
    lora = llama.attach("lora", {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj", "v_proj"]})
    with torch.no_grad():
        for p in lora.parameters():
            p.add_(0.1 * torch.randn_like(p))
    out = llama(ids, mask).logits
    lora.save(tmp_path / "lora")
    assert json.load(open(tmp_path / "lora" / "adapter_config.json"))["peft_type"] == "LORA"
    again = modula.load_model(LLAMA)
    again.attach("lora", tmp_path / "lora")
    torch.testing.assert_close(again(ids, mask).logits, out)
    if os.environ.get("MODULA_CLI"):  # the CLI reads the folder Python wrote
        assert again.generate([5, 17, 42], 8, stop_ids=[]) == cli_generate(["-a", str(tmp_path / "lora")])
    # A model with the LoRA folded in, saved as an HF folder, reloads to the same outputs.
    lora.merge()
    llama.save(tmp_path / "merged")
    torch.testing.assert_close(modula.load_model(tmp_path / "merged")(ids, mask).logits, out, **TOL)


def test_merges(llama, tmp_path):
    case = json.load(open(os.path.join(MIXED, "merges", "linear", "case.json")))
    ref = read_safetensors(os.path.join(MIXED, "merges", "linear", "expected.safetensors"))
    mix_ref = read_safetensors(os.path.join(MIXED, "expected.safetensors"))
    ids, mask = mix_ref["input_ids"], mix_ref["attention_mask"]
    for name in case["adapters"]:
        llama.attach(name, os.path.join(MIXED, name)).disable()
    merged = modula.merge_adapters(llama, case["adapters"], case["weights"], "ab",
                                   combination_type=case["combination_type"])
    assert merged.peft_type == "LORA"
    assert_close_masked(llama(ids, mask).logits, ref["logits"], mask)
    # Full-model merge: halfway between the base and base + LoRA = the LoRA at scale 0.5.
    tuned = modula.load_model(LLAMA)
    tuned.attach("lora", os.path.join(ADAPTERS, "llama-lora")).merge()
    tuned.save(tmp_path / "tuned")
    report = modula.merge_models({"merge_method": "linear", "models": [LLAMA, str(tmp_path / "tuned")],
                                  "weights": [0.5, 0.5]}, tmp_path / "half")
    assert report["tensors"] > 0
    half = modula.load_model(tmp_path / "half")(ids, mask).logits
    scaled = modula.load_model(LLAMA)
    scaled.attach("lora", os.path.join(ADAPTERS, "llama-lora"), scale=0.5)
    assert_close_masked(half, scaled(ids, mask).logits, mask)


def test_train_config_dict(tmp_path):
    words = ["<unk>", "<s>", "</s>", "the", "cat", "dog", "runs", "sleeps", "a", "red", "blue"]
    tok = {"version": "1.0", "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"},
           "model": {"type": "WordLevel", "vocab": {w: i for i, w in enumerate(words)}, "unk_token": "<unk>"},
           "post_processor": None, "decoder": None}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok))
    records = [{"prompt": "the cat", "completion": " runs"}, {"prompt": "a dog", "completion": " sleeps"}] * 8
    config = {"model": LLAMA, "tokenizer": str(tmp_path / "tokenizer.json"), "output": str(tmp_path / "out"),
              "modules": [{"name": "m", "config": {"peft_type": "LORA", "r": 4, "target_modules": "all-linear"}}],
              "tasks": [{"name": "lm", "type": "causal_lm", "modules": ["m"]}],
              "optim": {"lr": 1e-2, "max_steps": 3, "batch_size": 4}}
    steps = []
    result = modula.train(config, {"lm": {"train": records}}, callbacks={"on_step": steps.append})
    assert result["steps"] == 3 and [s["step"] for s in steps] == [1, 2, 3]
    assert os.path.isfile(os.path.join(result["output"], "modules", "m", "adapter_config.json"))
    with pytest.raises(modula.ConfigError, match="tasks"):
        modula.train({"model": LLAMA})


def test_tokenizer_matches_reference():
    cases = json.load(open(os.path.join(HF, "tokenizers", "expected.json")))["cases"]
    for name, file in (("bytelevel-bpe", "bytelevel-bpe.json"), ("wordpiece", "wordpiece.json"),
                       ("unigram", "unigram.json"), ("sentencepiece", "sentencepiece.model")):
        tok = modula.Tokenizer(os.path.join(HF, "tokenizers", file))
        for c in cases[name]:
            assert tok.encode(c["text"]) == c["ids"]
            assert tok.decode(c["ids"]) == c["decoded"]


def test_errors_carry_modulas_message(llama):
    with pytest.raises(modula.Error, match=r"\[config\] cannot open"):
        modula.load_model(os.path.join(HF, "tokenizers"))
    with pytest.raises(modula.Error, match="no_such_folder"):
        llama.attach("x", os.path.join(ADAPTERS, "no_such_folder"))
    with pytest.raises(modula.ConfigError, match="FOO"):
        llama.attach("x", {"peft_type": "FOO"})
    with pytest.raises(modula.ConfigError, match="no module set 'nope'"):
        llama.module("nope")
    assert issubclass(modula.ConfigError, ValueError) and issubclass(modula.Error, RuntimeError)
