"""Per-call overhead of the Python layer on a batch-1 forward, against the same forward
timed inside the C++ extension (Model._time_forward), in one process with the same threads.

    PYTHONPATH=build/python python3 bench/python_overhead.py [--model DIR] [--tokens 16] [--calls 5000]

Calls the two paths alternately, one forward each, and prints for wall time and for the
calling thread's CPU time (which time slices given to other processes do not inflate; with
--threads 1 the forward runs on that thread) the median time per call of each path and the
overhead (python - c++) in microseconds and as a fraction of the C++ call. The C++ time
is taken inside the extension, so the overhead includes the pybind11 crossing.
"""

import argparse
import os
import statistics
import time

import torch

import modula

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.path.join(HERE, "..", "tests", "fixtures", "hf", "models", "llama"))
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lora", action="store_true", help="attach a LoRA (r=8, q/v) first")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    model = modula.load_model(a.model)
    if a.lora:
        model.attach("lora", {"peft_type": "LORA", "r": 8, "target_modules": ["q_proj", "v_proj"]})
    ids = torch.randint(0, model.config["vocab_size"], (1, a.tokens))
    with torch.no_grad():
        for _ in range(50):  # warm-up
            model(ids)
        model._core._time_forward(ids, 50)
        times = {"c++": ([], []), "python": ([], [])}  # (wall, thread CPU) of each call
        for _ in range(a.calls):  # one call of each, alternating: a burst of other load hits both
            wall, cpu = model._core._time_forward(ids, 1)
            times["c++"][0].append(wall)
            times["c++"][1].append(cpu)
            wall, cpu = time.perf_counter(), time.thread_time()
            model(ids)
            times["python"][0].append(time.perf_counter() - wall)
            times["python"][1].append(time.thread_time() - cpu)
    print(f"model {os.path.basename(os.path.normpath(a.model))}  batch 1 x {a.tokens} tokens  threads {a.threads}"
          f"  {a.calls} calls of each{'  +LoRA' if a.lora else ''}  (medians)")
    for k, clock in enumerate(("wall", "thread CPU")):
        cpp, py = statistics.median(times["c++"][k]), statistics.median(times["python"][k])
        print(f"{clock:>10}: c++ {cpp * 1e6:8.1f} us/call  python {py * 1e6:8.1f} us/call  "
              f"overhead {(py - cpp) * 1e6:6.1f} us ({(py - cpp) / cpp * 100:+.1f}%)")


if __name__ == "__main__":
    main()
