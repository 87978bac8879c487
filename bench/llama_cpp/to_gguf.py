#!/usr/bin/env python3
"""Writes a modula / HF Llama folder as a GGUF f32 model for llama.cpp, and PEFT LoRA folders
as GGUF LoRA adapters (the peer side of bench/llama_cpp/run.sh).

    to_gguf.py model MODEL_DIR OUT.gguf
    to_gguf.py lora  ADAPTER_DIR OUT.gguf --model MODEL_DIR

Plain Python (json, struct): the f32 tensors of model.safetensors are copied as bytes, with
q_proj / k_proj rows reordered from HF's rotate-half layout to llama.cpp's interleaved
rotary layout (and the LoRA B matrices of q / k likewise). The vocabulary is a placeholder
of vocab_size tokens (the benchmark feeds token ids, never text): <unk>, <s>, </s>, the 256
byte tokens llama.cpp's SPM vocabulary needs, then "▁t<i>". Anything that is not an f32
Llama (other dtype, architecture, shapes) is refused with a message naming the file and key.
"""
import json
import os
import struct
import sys

ALIGN = 32
T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR = 4, 5, 6, 7, 8, 9


def fail(msg):
    sys.exit(f"to_gguf: {msg}")


class Safetensors:
    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.data = f.read()
        if len(self.data) < 8:
            fail(f"{path}: too short for a safetensors file")
        (n,) = struct.unpack("<Q", self.data[:8])
        if n > len(self.data) - 8 or n > 100 << 20:
            fail(f"{path}: header length {n} is out of bounds")
        try:
            self.header = json.loads(self.data[8 : 8 + n])
        except ValueError as e:
            fail(f"{path}: header is not JSON ({e})")
        self.header.pop("__metadata__", None)
        self.base = 8 + n

    def tensor(self, key):
        if key not in self.header:
            fail(f"{self.path}: no tensor '{key}'")
        info = self.header[key]
        if info.get("dtype") != "F32":
            fail(f"{self.path}: tensor '{key}' is {info.get('dtype')}, this converter writes f32 only")
        start, end = info["data_offsets"]
        shape = info["shape"]
        count = 1
        for d in shape:
            count *= d
        if end - start != 4 * count or self.base + end > len(self.data):
            fail(f"{self.path}: tensor '{key}' has {end - start} bytes for shape {shape}")
        return shape, self.data[self.base + start : self.base + end]


def rotary_rows(rows_bytes, n_rows, n_heads):
    """HF rotate-half row order [head][half][i] -> llama.cpp's interleaved [head][i][half]."""
    if n_rows % (2 * n_heads):
        fail(f"{n_rows} rows do not split into {n_heads} heads of even size")
    row = len(rows_bytes) // n_rows
    half = n_rows // n_heads // 2
    out = []
    for h in range(n_heads):
        for i in range(half):
            for part in range(2):
                r = (h * 2 + part) * half + i
                out.append(rows_bytes[r * row : (r + 1) * row])
    return b"".join(out)


class Writer:
    def __init__(self):
        self.kv = []
        self.tensors = []  # (name, ggml dims innermost first, bytes)

    @staticmethod
    def string(s):
        b = s.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    def add(self, key, kind, value):
        body = struct.pack("<I", kind)
        if kind == T_STR:
            body += self.string(value)
        elif kind == T_ARR:
            elem, items = value
            body += struct.pack("<IQ", elem, len(items))
            for it in items:
                body += self.string(it) if elem == T_STR else struct.pack({T_F32: "<f", T_I32: "<i"}[elem], it)
        else:
            body += struct.pack({T_U32: "<I", T_F32: "<f", T_BOOL: "<?"}[kind], value)
        self.kv.append(self.string(key) + body)

    def tensor(self, name, shape, data):
        self.tensors.append((name, list(reversed(shape)), data))

    def write(self, path):
        head = b"GGUF" + struct.pack("<IQQ", 3, len(self.tensors), len(self.kv)) + b"".join(self.kv)
        offset, infos = 0, []
        for name, dims, data in self.tensors:
            infos.append(self.string(name) + struct.pack("<I", len(dims)) +
                         b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", 0, offset))
            offset += (len(data) + ALIGN - 1) // ALIGN * ALIGN
        head += b"".join(infos)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(head + b"\0" * (-len(head) % ALIGN))
            for _, _, data in self.tensors:
                f.write(data + b"\0" * (-len(data) % ALIGN))
        os.replace(tmp, path)


def read_config(model_dir):
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path) as f:
            c = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{path}: {e}")
    if c.get("model_type") != "llama":
        fail(f"{path}: model_type is {c.get('model_type')!r}, this converter writes llama only")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(c.get(key), int) or c[key] <= 0:
            fail(f"{path}: '{key}' must be a positive integer")
    return c


LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
         "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down"}


def convert_model(model_dir, out):
    c = read_config(model_dir)
    heads = c["num_attention_heads"]
    kv_heads = c.get("num_key_value_heads", heads)
    st = Safetensors(os.path.join(model_dir, "model.safetensors"))
    w = Writer()
    w.add("general.architecture", T_STR, "llama")
    w.add("general.name", T_STR, "modula-bench-llama")
    w.add("general.file_type", T_U32, 0)
    w.add("general.alignment", T_U32, ALIGN)
    w.add("llama.vocab_size", T_U32, c["vocab_size"])
    w.add("llama.context_length", T_U32, c.get("max_position_embeddings", 2048))
    w.add("llama.embedding_length", T_U32, c["hidden_size"])
    w.add("llama.block_count", T_U32, c["num_hidden_layers"])
    w.add("llama.feed_forward_length", T_U32, c["intermediate_size"])
    w.add("llama.rope.dimension_count", T_U32, c["hidden_size"] // heads)
    w.add("llama.attention.head_count", T_U32, heads)
    w.add("llama.attention.head_count_kv", T_U32, kv_heads)
    w.add("llama.attention.layer_norm_rms_epsilon", T_F32, float(c.get("rms_norm_eps", 1e-6)))
    w.add("llama.rope.freq_base", T_F32, float(c.get("rope_theta", 10000.0)))
    n = c["vocab_size"]
    if n < 259:
        fail(f"vocab_size {n} is below the 259 placeholder tokens llama.cpp's SPM vocabulary needs")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(len(tokens), n)]
    types = [2, 3, 3] + [6] * 256 + [1] * (n - 259)
    w.add("tokenizer.ggml.model", T_STR, "llama")
    w.add("tokenizer.ggml.tokens", T_ARR, (T_STR, tokens))
    w.add("tokenizer.ggml.scores", T_ARR, (T_F32, [0.0] * n))
    w.add("tokenizer.ggml.token_type", T_ARR, (T_I32, types))
    w.add("tokenizer.ggml.unknown_token_id", T_U32, 0)
    w.add("tokenizer.ggml.bos_token_id", T_U32, 1)
    w.add("tokenizer.ggml.eos_token_id", T_U32, 2)
    w.add("tokenizer.ggml.add_bos_token", T_BOOL, False)
    w.tensor("token_embd.weight", *st.tensor("model.embed_tokens.weight"))
    w.tensor("output_norm.weight", *st.tensor("model.norm.weight"))
    lm_head = "lm_head.weight" if "lm_head.weight" in st.header else "model.embed_tokens.weight"
    w.tensor("output.weight", *st.tensor(lm_head))
    for i in range(c["num_hidden_layers"]):
        for hf, gg in LAYER.items():
            shape, data = st.tensor(f"model.layers.{i}.{hf}.weight")
            if hf.endswith(("q_proj", "k_proj")):
                data = rotary_rows(data, shape[0], heads if hf.endswith("q_proj") else kv_heads)
            w.tensor(f"blk.{i}.{gg}.weight", shape, data)
    w.write(out)


def convert_lora(adapter_dir, out, model_dir):
    c = read_config(model_dir)
    heads = c["num_attention_heads"]
    kv_heads = c.get("num_key_value_heads", heads)
    path = os.path.join(adapter_dir, "adapter_config.json")
    try:
        with open(path) as f:
            a = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{path}: {e}")
    if a.get("peft_type") != "LORA":
        fail(f"{path}: peft_type is {a.get('peft_type')!r}, not LORA")
    if a.get("use_dora") or a.get("use_rslora"):
        fail(f"{path}: DoRA / rsLoRA have no llama.cpp equivalent")
    st = Safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"))
    w = Writer()
    w.add("general.architecture", T_STR, "llama")
    w.add("general.type", T_STR, "adapter")
    w.add("general.alignment", T_U32, ALIGN)
    w.add("adapter.type", T_STR, "lora")
    w.add("adapter.lora.alpha", T_F32, float(a.get("lora_alpha", 8)))
    prefix = "base_model.model.model.layers."
    found = 0
    for key in sorted(st.header):
        if not key.endswith(".lora_A.weight"):
            continue
        if not key.startswith(prefix):
            fail(f"{st.path}: tensor '{key}' is not a Llama layer's")
        layer, site = key[len(prefix) :].split(".", 1)
        site = site[: -len(".lora_A.weight")]
        if site not in LAYER:
            fail(f"{st.path}: tensor '{key}': no llama.cpp tensor for '{site}'")
        name = f"blk.{int(layer)}.{LAYER[site]}.weight"
        a_shape, a_data = st.tensor(key)
        b_shape, b_data = st.tensor(key.replace(".lora_A.", ".lora_B."))
        if site.endswith(("q_proj", "k_proj")):
            b_data = rotary_rows(b_data, b_shape[0], heads if site.endswith("q_proj") else kv_heads)
        w.tensor(name + ".lora_a", a_shape, a_data)
        w.tensor(name + ".lora_b", b_shape, b_data)
        found += 1
    if not found:
        fail(f"{st.path}: no lora_A tensors")
    w.write(out)


def main(argv):
    if len(argv) == 4 and argv[1] == "model":
        convert_model(argv[2], argv[3])
    elif len(argv) == 6 and argv[1] == "lora" and argv[4] == "--model":
        convert_lora(argv[2], argv[3], argv[5])
    else:
        fail("usage: to_gguf.py model MODEL_DIR OUT.gguf | to_gguf.py lora ADAPTER_DIR OUT.gguf --model MODEL_DIR")


if __name__ == "__main__":
    main(sys.argv)
