#!/usr/bin/env python3
"""GPU machine only (needs transformers + peft): every adapter folder that modula wrote
(tests/tools/peft_interop) must load in PEFT unchanged and give modula's logits.

usage: peft_check.py FIXTURES_ROOT ADAPTERS_DIR [MODULA_BIN]
With MODULA_BIN, also `modula export` each mergeable adapter and check that transformers
loads the merged folder and gives the same logits.
"""
import os, subprocess, sys, tempfile
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
from peft import PeftModel

root, adapters = sys.argv[1], sys.argv[2]
modula = sys.argv[3] if len(sys.argv) > 3 else None
failed = 0
checked = 0
for name in sorted(os.listdir(adapters)):
    arch = name.split("-")[0]
    base_dir = os.path.join(root, "hf", "models", arch)
    cls = AutoModelForMaskedLM if arch in ("bert", "xlm") else AutoModelForCausalLM
    base = cls.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, os.path.join(adapters, name)).eval()
    ref = load_file(os.path.join(adapters, name, "modula_logits.safetensors"))
    with torch.no_grad():
        out = model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).logits
    want = ref["logits"]
    mask = ref["attention_mask"]
    if out.shape[1] > mask.shape[1]:  # prompt tuning: virtual positions
        mask = torch.cat([torch.ones(mask.shape[0], out.shape[1] - mask.shape[1], dtype=mask.dtype), mask], 1)
    diff = ((out - want).abs() * mask.unsqueeze(-1)).max().item() if out.shape == want.shape else float("inf")
    ok = diff < 1e-4
    failed += not ok
    checked += 1
    print(f"{'PASS' if ok else 'FAIL'}  {name}  max_abs_diff={diff:.3g}  shape={tuple(out.shape)}")
    if modula and "prompt" not in name and "prefix" not in name:
        merged = tempfile.mkdtemp()
        subprocess.run([modula, "export", "-m", base_dir, "-a", os.path.join(adapters, name), "-o", merged],
                       check=True, capture_output=True)
        exported = cls.from_pretrained(merged, dtype=torch.float32).eval()
        with torch.no_grad():
            got = exported(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).logits
        diff = ((got - want).abs() * mask.unsqueeze(-1)).max().item()
        ok = diff < 1e-4
        failed += not ok
        checked += 1
        print(f"{'PASS' if ok else 'FAIL'}  {name} (modula export -> transformers)  max_abs_diff={diff:.3g}")
print(f"{checked - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
