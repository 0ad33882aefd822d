"""PyTorch twin of benches/cnn.rs: the same convolution, transposed-convolution and batch-norm
work on the same shapes, each direction timed alone (minimum over repetitions filling about
50 ms, after one warm-up), printed as JSON {case: ms}. Runs on PyTorch's CPU back end, or on
CUDA with --cuda."""
import json
import sys
import time

import torch
import torch.nn.functional as F

conv_bwd = torch.ops.aten.convolution_backward


def timeit(fn, sync):
    fn()
    sync()
    best, total, reps = float("inf"), 0.0, 0
    while reps < 2 or (total < 0.05 and reps < 20):
        t = time.perf_counter()
        fn()
        sync()
        dt = time.perf_counter() - t
        best, total, reps = min(best, dt), total + dt, reps + 1
    return best * 1e3


def main():
    device = "cuda" if "--cuda" in sys.argv else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    r = lambda *s: torch.randn(*s, device=device)
    out = {}
    convs = {
        "conv3x3_128_32_28": (4, 128, 28, 28, 32, 3, 1, 1),
        "conv1x1_256_128_28": (4, 256, 28, 28, 128, 1, 1, 0),
        "conv1x1_1024_128_7": (4, 1024, 7, 7, 128, 1, 1, 0),
        "conv7x7s2_3_64_128": (4, 3, 128, 128, 64, 7, 2, 3),
        "conv3x3_256_256_56": (4, 256, 56, 56, 256, 3, 1, 1),
    }
    with torch.no_grad():
        for name, (n, ci, h, w, co, k, s, p) in convs.items():
            x, wt = r(n, ci, h, w), r(co, ci, k, k)
            y = F.conv2d(x, wt, None, s, p)
            gy = torch.randn_like(y)
            out[name + "/forward"] = timeit(lambda: F.conv2d(x, wt, None, s, p), sync)
            out[name + "/input_grad"] = timeit(
                lambda: conv_bwd(gy, x, wt, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, [True, False, False]), sync)
            out[name + "/weight_grad"] = timeit(
                lambda: conv_bwd(gy, x, wt, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, [False, True, False]), sync)
        n, ci, h, w, co = 4, 512, 14, 14, 256
        x, wt = r(n, ci, h, w), r(ci, co, 3, 3)
        y = F.conv_transpose2d(x, wt, None, 2, 1, 1)
        gy = torch.randn_like(y)
        name = "convT3x3s2_512_256_14"
        out[name + "/forward"] = timeit(lambda: F.conv_transpose2d(x, wt, None, 2, 1, 1), sync)
        out[name + "/input_grad"] = timeit(
            lambda: conv_bwd(gy, x, wt, None, [2, 2], [1, 1], [1, 1], True, [1, 1], 1, [True, False, False]), sync)
        out[name + "/weight_grad"] = timeit(
            lambda: conv_bwd(gy, x, wt, None, [2, 2], [1, 1], [1, 1], True, [1, 1], 1, [False, True, False]), sync)
        x = r(4, 256, 56, 56)
        g, b = r(256).abs(), r(256)
        rm, rv = torch.zeros(256, device=device), torch.ones(256, device=device)
        out["bn_256_56/forward"] = timeit(lambda: F.batch_norm(x, rm, rv, g, b, True, 0.1, 1e-5), sync)
        _, save_mean, save_invstd = torch.ops.aten.native_batch_norm(x, g, b, rm, rv, True, 0.1, 1e-5)
        gy = torch.randn_like(x)
        out["bn_256_56/backward"] = timeit(
            lambda: torch.ops.aten.native_batch_norm_backward(
                gy, x, g, rm, rv, save_mean, save_invstd, True, 1e-5, [True, True, True]), sync)
    print(json.dumps({"device": device, "threads": torch.get_num_threads(), "torch": torch.__version__, "ms": out}))


if __name__ == "__main__":
    main()
