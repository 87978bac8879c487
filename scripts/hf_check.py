#!/usr/bin/env python3
"""GPU machine only (needs transformers): load a folder modula wrote in HF transformers and
compare its greedy continuation and logits with modula's.

usage: hf_check.py MODEL_DIR MODULA_BIN
"""
import subprocess, sys
import torch
from transformers import AutoModelForCausalLM

model_dir, modula = sys.argv[1], sys.argv[2]
prompt = [1, 4, 9, 12]  # ids valid in the quickstart backbone's 16-token vocabulary
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
model.generation_config.eos_token_id = None  # compare 12 tokens whatever they are
with torch.no_grad():
    hf = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                        eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
out = subprocess.run([modula, "generate", "-m", model_dir, "--prompt-ids", ",".join(map(str, prompt)),
                      "-n", "12", "--ignore-eos"], capture_output=True, text=True, check=True).stdout
ours = [int(t) for t in out.split()]
print("transformers:", hf)
print("modula:      ", ours)
sys.exit(0 if hf == ours else 1)
