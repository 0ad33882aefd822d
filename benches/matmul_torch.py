"""PyTorch twin of benches/matmul.rs: the same square sgemms, timed the same way (minimum over
repetitions filling about 20 ms, after one warm-up), printed as JSON {size: ms} on stdout.
Runs on PyTorch's CPU back end (or CUDA with --cuda). Usage: matmul_torch.py 256 512 1024"""
import json
import sys
import time

import torch


def bench(n, device):
    a = torch.rand(n, n, device=device)
    b = torch.rand(n, n, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b
    sync()
    best, total, reps = float("inf"), 0.0, 0
    while reps < 2 or (total < 0.02 and reps < 20):
        t = time.perf_counter()
        a @ b
        sync()
        dt = time.perf_counter() - t
        best, total, reps = min(best, dt), total + dt, reps + 1
    return best * 1e3


if __name__ == "__main__":
    device = "cuda" if "--cuda" in sys.argv else "cpu"
    sizes = [int(s) for s in sys.argv[1:] if not s.startswith("--")]
    out = {"device": device, "threads": torch.get_num_threads(), "torch": torch.__version__}
    out["ms"] = {str(n): bench(n, device) for n in sizes}
    print(json.dumps(out))
