#!/usr/bin/env python3
# The scripted kill -9 loop of issue 14 (item 5): crash safety of the four long commands.
#
#   scripts/kill_loop.sh [--cli build/apps/modula/modula] [--kills N] [--seed S] [--quick] [--keep]
#
# For each of `modula train CONFIG`, `modula pretrain CONFIG`, `modula merge RECIPE` and
# `modula export -m MODEL -a ADAPTER -o OUT`, on tiny inputs built from tests/fixtures/hf in a
# temp dir, the loop first makes one uninterrupted reference run, then repeatedly starts the
# command, sends SIGKILL after a random (seeded) delay and checks what the kill left behind:
#
#   train / pretrain: `--resume` must either resume from a complete checkpoint and finish with
#     exactly the reference run's result (every tensor of the written safetensors, and the
#     per-step losses of metrics.csv), or refuse cleanly (exit 1 naming the missing complete
#     checkpoint), after which a fresh `--overwrite` run must reach the reference result.
#   merge / export: the output folder must be absent, or rejected by `modula inspect` (exit 1
#     with a message, no crash), or complete and identical to the reference output; a rerun
#     into the same folder must then succeed and give the reference output.
#
# Every other kill of a command is "triggered": it waits for a checkpoint folder being built
# (step-N.tmp) or for the output folder to appear, then kills within milliseconds, so kills land
# inside the writes. --quick: 2 kills per command on 30-step runs (~16 s; the CTest test).
#
# Any crash (a signal or an exit code other than 0/1), any accepted output that differs from
# the reference, or any failed rerun is a FAIL. One line per kill, a summary, exit 0 only when
# every outcome is acceptable. Standard library only (python3), so it runs anywhere CTest does.
import argparse
import filecmp
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from array import array

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures", "hf")

# ---------------------------------------------------------------------------------------------
# Inputs (the same tiny word-level tokenizers and data as tests/train/tiny.h)

WORDS = ["good", "bad", "great", "awful", "movie", "film", "the", "a", "is", "was", "very", "not", "red",
         "blue", "cat", "dog", "runs", "sleeps", "paris", "london", "in", "lives", "alice", "bob", "yes", "no"]


def write_tokenizer(path, bert):
    """WordLevel tokenizer.json whose ids fit the fixture models' 512-token vocabularies."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] if bert else ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}

    def special(t):
        return {"id": t, "ids": [vocab[t]], "tokens": [t]}

    first = "[CLS]" if bert else "<s>"
    single = [{"SpecialToken": {"id": first, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
    if bert:
        single.append({"SpecialToken": {"id": "[SEP]", "type_id": 0}})
    tok = {"version": "1.0", "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"},
           "model": {"type": "WordLevel", "vocab": vocab, "unk_token": specials[1] if bert else "<unk>"},
           "decoder": None,
           "post_processor": {"type": "TemplateProcessing", "single": single,
                              "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {t: special(t) for t in ([first, "[SEP]"] if bert else [first])}}}
    with open(path, "w") as f:
        json.dump(tok, f)


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def setup_inputs(work, cli, steps):
    """Tokenizers, data, the train/pretrain configs' common part, and the merge inputs."""
    write_tokenizer(os.path.join(work, "bert_tok.json"), True)
    write_tokenizer(os.path.join(work, "llama_tok.json"), False)
    fill = ["the movie was", "a film is", "the film was very", "a movie"]
    write_jsonl(os.path.join(work, "train.jsonl"),
                [{"text": fill[i % 4] + (" good" if i % 2 == 0 else " bad"), "label": "pos" if i % 2 == 0 else "neg"}
                 for i in range(24)])
    text = ["the cat sleeps in paris", "a dog runs in london", "alice lives in paris", "bob lives in london",
            "the red cat is not blue"]
    write_jsonl(os.path.join(work, "text.jsonl"), [{"text": text[i % 5]} for i in range(20)])
    # The base model of merge and export: the fixture Llama plus a tokenizer.json padded to
    # ~16 MB (valid JSON; the padding key is ignored), so that the side files both commands
    # copy next to the weights take a while and a kill can land inside that copy too.
    base = os.path.join(work, "base_llama")
    os.makedirs(base)
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(os.path.join(FIX, "models", "llama", f), base)
    with open(os.path.join(work, "llama_tok.json")) as f:
        tok = json.load(f)
    tok["padding_for_kill_loop"] = "x" * (16 << 20)
    with open(os.path.join(base, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    # Merge inputs: that model with the fixture LoRA and (IA)3 adapter folded in; each is a
    # full model with the base's architecture, so a TIES merge over them touches every tensor.
    for name, adapter in (("m_lora", "llama-lora"), ("m_ia3", "llama-ia3")):
        r = subprocess.run([cli, "export", "-m", base, "-a",
                            os.path.join(FIX, "adapters", adapter), "-o", os.path.join(work, name)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"setup: export of {adapter} failed:\n{r.stdout}{r.stderr}")


def train_config(work, name, steps):
    """`modula train`: a LoRA on the fixture BERT, sequence classification, checkpoint every 3 steps."""
    path = os.path.join(work, name + ".yaml")
    with open(path, "w") as f:
        f.write(f"model: {os.path.join(FIX, 'models', 'bert')}\ntokenizer: bert_tok.json\noutput: {name}\nseed: 5\n"
                "modules:\n  - {name: m, config: {peft_type: LORA, r: 4, target_modules: all-linear}}\n"
                "tasks:\n  - {name: sent, type: sequence_classification, train: train.jsonl}\n"
                f"optim: {{lr: 0.01, max_steps: {steps}, batch_size: 4, schedule: cosine, warmup_steps: 5, max_grad_norm: 1.0}}\n"
                "checkpoint: {every: 3, keep: 2}\nlog_every: 1000\n")
    return path


def pretrain_config(work, name, steps):
    """`modula pretrain`: the fixture Llama's config.json from random init, causal LM."""
    path = os.path.join(work, name + ".yaml")
    with open(path, "w") as f:
        f.write(f"model: {os.path.join(FIX, 'models', 'llama', 'config.json')}\ntokenizer: llama_tok.json\n"
                f"output: {name}\nseed: 1\ntasks: [{{name: lm, type: causal_lm, train: text.jsonl}}]\n"
                f"optim: {{lr: 0.003, max_steps: {steps}, batch_size: 4}}\n"
                "checkpoint: {every: 3, keep: 2}\nlog_every: 1000\n")
    return path


def merge_recipe(work, name):
    """`modula merge`: TIES over the fixture Llama and two models derived from it."""
    path = os.path.join(work, name + ".yaml")
    with open(path, "w") as f:
        f.write(f"merge_method: ties\nbase_model: base_llama\n"
                "models:\n  - {model: m_lora, parameters: {weight: 0.7, density: 0.5}}\n"
                "  - {model: m_ia3, parameters: {weight: 0.3, density: [0.3, 0.7]}}\n"
                f"parameters: {{normalize: true}}\noutput: {name}\n")
    return path


# ---------------------------------------------------------------------------------------------
# Comparing outputs

def read_safetensors(path):
    """{name: (dtype, shape, raw bytes)}; raises on a malformed file."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = (v["dtype"], v["shape"], body[a:b])
    return out


def tensor_diff(a, b):
    """'' when the two safetensors files hold the same tensors to 1e-6, else what differs."""
    try:
        ta, tb = read_safetensors(a), read_safetensors(b)
    except Exception as e:  # noqa: BLE001 (a file we cannot even parse is a difference)
        return f"cannot read {os.path.basename(b)}: {e}"
    if sorted(ta) != sorted(tb):
        return f"{os.path.basename(b)}: tensor names differ"
    for k in ta:
        da, sa, ba = ta[k]
        db, sb, bb = tb[k]
        if (da, sa) != (db, sb):
            return f"{k}: dtype/shape differ"
        if ba == bb:
            continue
        if da != "F32" or len(ba) != len(bb):
            return f"{k}: bytes differ"
        xa, xb = array("f", ba), array("f", bb)
        worst = max(abs(x - y) for x, y in zip(xa, xb))
        if not worst <= 1e-6:
            return f"{k}: max abs diff {worst:.3g}"
    return ""


def step_losses(run_dir):
    """(step, task, loss) of every step row of metrics.csv (what test_train_cli.cpp compares)."""
    rows = []
    try:
        with open(os.path.join(run_dir, "metrics.csv")) as f:
            for line in f:
                c = line.rstrip("\n").split(",")
                if len(c) > 5 and c[0] == "step":
                    rows.append((c[2], c[4], c[5]))
    except OSError:
        pass
    return rows


def folder_files(d):
    """Relative paths of the files the reference output has (temp files excluded)."""
    out = []
    for base, _, files in os.walk(d):
        for f in files:
            if not f.endswith(".tmp"):
                out.append(os.path.relpath(os.path.join(base, f), d))
    return sorted(out)


def compare_folder(ref, got):
    """'' when `got` holds the reference output: same tensors (to 1e-6), same JSON files."""
    for rel in folder_files(ref):
        a, b = os.path.join(ref, rel), os.path.join(got, rel)
        if not os.path.isfile(b):
            return f"missing {rel}"
        if rel.endswith(".safetensors"):
            d = tensor_diff(a, b)
            if d:
                return d
        elif rel.endswith(".json"):
            # Equal as JSON; merge_recipe.json records the recipe's own `output`, which is the
            # name of the folder and so differs by design.
            try:
                with open(a) as fa, open(b) as fb:
                    ja, jb = json.load(fa), json.load(fb)
            except (OSError, ValueError) as e:
                return f"{rel}: {e}"
            for j in (ja, jb):
                if isinstance(j, dict):
                    j.pop("output", None)
            if ja != jb:
                return f"{rel} differs"
    return ""


# ---------------------------------------------------------------------------------------------
# Running and killing

def crashed(rc, text):
    """A signal, an exit code other than 0/1 (2 = usage), or the marks of an uncaught exception."""
    return rc not in (0, 1) or "terminate called" in text or "Segmentation fault" in text or "Aborted" in text


def run(cmd, cwd, log):
    r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with open(log, "w") as f:
        f.write(r.stdout)
    return r.returncode, r.stdout


def start_and_kill(cmd, cwd, delay, log, trigger=None, after=0.0):
    """Starts cmd and SIGKILLs it `delay` s after the start or, with `trigger` (a function that
    says whether the moment has come: a checkpoint or the output being written), `after` s
    after the trigger first fires once `delay` s have passed. Returns True if it was killed,
    False if it had finished (or failed) first."""
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
        try:
            p.wait(timeout=delay)
            return False
        except subprocess.TimeoutExpired:
            pass
        if trigger is not None:
            while p.poll() is None and not trigger():
                time.sleep(0.0003)  # poll the file system every 0.3 ms
            if p.poll() is not None:
                return False
            time.sleep(after)
        if p.poll() is not None:
            return False
        p.kill()  # SIGKILL
        p.wait()
        return True


def last_line(text):
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1][:160] if lines else "(no output)"


class Job:
    """One of the four commands: how to start it into a given output name, and how to judge it."""

    def __init__(self, name, cli, work, steps):
        self.name, self.cli, self.work, self.steps = name, cli, work, steps

    def command(self, out):
        w, cli = self.work, self.cli
        if self.name == "train":
            return [cli, "train", train_config(w, out, self.steps), "--threads", "1"]
        if self.name == "pretrain":
            return [cli, "pretrain", pretrain_config(w, out, self.steps), "--threads", "1"]
        if self.name == "merge":
            return [cli, "merge", merge_recipe(w, out)]
        return [cli, "export", "-m", os.path.join(w, "base_llama"), "-a",
                os.path.join(FIX, "adapters", "llama-lora"), "-o", os.path.join(w, out)]

    def is_training(self):
        return self.name in ("train", "pretrain")

    def result_diff(self, out):
        """'' when output `out` equals the reference run's."""
        ref, got = os.path.join(self.work, "ref_" + self.name), os.path.join(self.work, out)
        if self.name == "train":
            for rel in ("modules/m/adapter_model.safetensors", "heads.safetensors"):
                d = tensor_diff(os.path.join(ref, rel), os.path.join(got, rel))
                if d:
                    return d
        elif self.name == "pretrain":
            d = tensor_diff(os.path.join(ref, "model/model.safetensors"), os.path.join(got, "model/model.safetensors"))
            if d:
                return d
            for rel in ("model/config.json", "model/tokenizer.json"):  # the folder loads on its own
                if not filecmp.cmp(os.path.join(ref, rel), os.path.join(got, rel), shallow=False):
                    return f"{rel} differs from the reference"
        else:
            return compare_folder(ref, got)
        if step_losses(ref) != step_losses(got):
            return f"metrics.csv step losses differ ({len(step_losses(got))} vs {len(step_losses(ref))} rows)"
        if not os.path.isfile(os.path.join(got, "result.json")):
            return "no result.json"
        return ""

    def reference(self):
        t0 = time.monotonic()
        rc, text = run(self.command("ref_" + self.name), self.work, os.path.join(self.work, f"ref_{self.name}.log"))
        if rc != 0:
            sys.exit(f"reference {self.name} run failed (exit {rc}):\n{text}")
        return time.monotonic() - t0

    def trigger(self, base):
        """The moment a triggered kill waits for: a checkpoint folder being built (step-N.tmp)
        for train/pretrain, the output folder having appeared for merge/export."""
        if self.is_training():
            ck = os.path.join(base, "checkpoints")

            def building():
                try:
                    return any(n.endswith(".tmp") for n in os.listdir(ck))
                except OSError:
                    return False
            return building
        return lambda: os.path.exists(base)

    def kill_once(self, i, delay, after=None):
        """Returns (ok, outcome text) for one kill `delay` s after the start, or, with `after`,
        `after` s after the trigger that follows `delay`."""
        out = f"k{i}_{self.name}"
        base = os.path.join(self.work, out)
        killed = start_and_kill(self.command(out), self.work, delay, base + ".log",
                                self.trigger(base) if after is not None else None, after or 0.0)
        when = "killed" if killed else "finished before the kill"
        if self.is_training():
            return self.judge_training(out, base, when)
        return self.judge_output(out, base, when)

    def judge_training(self, out, base, when):
        cmd = self.command(out)
        if os.path.isfile(os.path.join(base, "result.json")) and when == "killed":
            # Killed between the last write (result.json) and the exit: the run is complete
            # and must be exactly the reference.
            d = self.result_diff(out)
            if d:
                return False, f"killed after result.json was written; output differs from the reference: {d}"
            return True, "killed after the run finished; output complete and matched the reference"
        try:  # a checkpoint cut off while being built
            cut = sorted(n for n in os.listdir(os.path.join(base, "checkpoints")) if n.endswith(".tmp"))
        except OSError:
            cut = []
        if cut:
            when += f" while writing {cut[0]}"
        rc, text = run(cmd + ["--resume"], self.work, base + ".resume.log")
        if crashed(rc, text):
            return False, f"{when}; --resume CRASHED (exit {rc}): {last_line(text)}"
        if "skipped incomplete checkpoint" in text:
            when += " mid-checkpoint (resume skipped the cut-off one)"
        if rc == 0:
            d = self.result_diff(out)
            if d:
                return False, f"{when}; --resume accepted and finished but differs from the reference: {d}"
            at = [l for l in text.splitlines() if "resumed" in l]
            return True, f"{when}; resumed and matched the reference ({at[0].strip()[:80] if at else 'no resume line'})"
        # rc == 1: must be a clean refusal naming the missing complete checkpoint.
        if "checkpoint" not in text:
            return False, f"{when}; --resume exit 1 without naming a checkpoint: {last_line(text)}"
        rc2, text2 = run(cmd + ["--overwrite"], self.work, base + ".fresh.log")
        if rc2 != 0:
            return False, f"{when}; --resume refused, but the fresh --overwrite run failed (exit {rc2}): {last_line(text2)}"
        d = self.result_diff(out)
        if d:
            return False, f"{when}; --resume refused; fresh run differs from the reference: {d}"
        return True, f"{when}; --resume refused cleanly ({last_line(text)[:70]}), fresh run matched"

    def judge_output(self, out, base, when):
        # 1. What the kill left: absent, rejected by a loader, or complete and identical.
        if not os.path.exists(base):
            state = "output absent"
        else:
            rc, text = run([self.cli, "inspect", base], self.work, base + ".inspect.log")
            if crashed(rc, text):
                return False, f"{when}; `inspect` of the leftover CRASHED (exit {rc}): {last_line(text)}"
            left = ", ".join(folder_files(base) + [f for f in os.listdir(base) if f.endswith(".tmp")]) or "empty"
            if rc == 1:
                state = f"leftover [{left}] rejected by inspect ({last_line(text).split(':')[0]}...)"
            else:
                d = self.result_diff(out)
                if d:
                    return False, f"{when}; CORRUPT output accepted by inspect: {d}"
                state = f"output [{left}] accepted by inspect and identical to the reference"
        # 2. A rerun into the same folder succeeds and gives the reference output.
        rc, text = run(self.command(out), self.work, base + ".rerun.log")
        if rc != 0:
            return False, f"{when}; {state}; rerun into the same folder failed (exit {rc}): {last_line(text)}"
        d = self.result_diff(out)
        if d:
            return False, f"{when}; {state}; rerun output differs from the reference: {d}"
        return True, f"{when}; {state}; rerun matched"


def main():
    ap = argparse.ArgumentParser(description="kill -9 loop over modula train/pretrain/merge/export")
    ap.add_argument("--cli", default=os.path.join(ROOT, "build", "apps", "modula", "modula"))
    ap.add_argument("--kills", type=int, default=None, help="total kills, spread over the 4 commands (default 24)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the kill moments (default: from the clock)")
    ap.add_argument("--quick", action="store_true", help="2 kills per command (1 plain, 1 triggered), short runs (CTest)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    a = ap.parse_args()
    kills = a.kills if a.kills is not None else (8 if a.quick else 24)
    seed = a.seed if a.seed is not None else int(time.time()) % 100000
    steps = 30 if a.quick else 300
    cli = os.path.abspath(a.cli)
    if not os.access(cli, os.X_OK):
        sys.exit(f"no modula CLI at {cli}")
    rng = random.Random(seed)
    t_start = time.monotonic()
    work = tempfile.mkdtemp(prefix="modula-kill-loop-")
    print(f"kill loop: seed {seed}, {kills} kills, {steps} training steps, work dir {work}", flush=True)
    setup_inputs(work, cli, steps)

    jobs = [Job(n, cli, work, steps) for n in ("train", "pretrain", "merge", "export")]
    durations = {}
    for j in jobs:
        durations[j.name] = j.reference()
        print(f"reference {j.name}: {durations[j.name]:.2f} s", flush=True)

    results = {j.name: [] for j in jobs}
    for i in range(kills):
        j = jobs[i % len(jobs)]
        # Every other round of a command is a "triggered" kill. Plain: a moment anywhere from
        # the process start to just past the reference run's length (start-up, mid-run, final
        # writes). Triggered: after a random part of the run, wait until a checkpoint is being
        # written (train/pretrain) or the output folder appears (merge/export), then kill within
        # a few milliseconds, so kills land inside the writes themselves.
        triggered = (i // len(jobs)) % 2 == 1
        if triggered:
            frac = 0.9 if j.is_training() else 0.3
            delay = rng.uniform(0.0, frac) * durations[j.name]
            after = rng.uniform(0.0, 0.004 if j.is_training() else 0.04)
            moment = f"{delay:5.2f} s + write + {after * 1000:3.1f} ms"
        else:
            delay, after = rng.uniform(0.02, 1.02) * durations[j.name], None
            moment = f"{delay:5.2f} s"
        ok, what = j.kill_once(i, delay, after)
        results[j.name].append(ok)
        print(f"kill {i + 1:3d}  {j.name:8s}  at {moment:26s}  {'ok  ' if ok else 'FAIL'}  {what}", flush=True)

    wall = time.monotonic() - t_start
    bad = sum(not ok for r in results.values() for ok in r)
    print("summary: " + ", ".join(f"{n} {sum(r)}/{len(r)} ok" for n, r in results.items()) +
          f"; {kills - bad}/{kills} acceptable; seed {seed}; wall {wall:.1f} s", flush=True)
    if a.keep or bad:
        print(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
