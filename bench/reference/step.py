"""PyTorch reference for bench/step.ts: one training step of EDSR x4 (as models/edsr.ts),
FP32, W2A2 plain QAT (learnable ranges, L1 only) and W2A2 ODM (clip-corrected weights, mismatch
loss on a second backward pass, cooperative per-tensor merge), Adam. CPU, 2 threads.

    /usr/bin/python3 bench/reference/step.py [--quick] [--steps N]

Prints {"rows": [{"name", "seconds"}]} (median seconds per step after one warm-up step).
Optional: bench/step.ts skips it when python3 or torch is missing.
"""
import json
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(2)
torch.manual_seed(0)

# QAT_TORCH_DEVICE=cuda for bench/gpu.sh on a GPU machine; the default is the CPU (2 threads),
# the baseline of bench/step.ts on the project's machines.
DEVICE = torch.device(os.environ.get("QAT_TORCH_DEVICE", "cpu"))
RGB_MEAN = (torch.tensor([0.4488, 0.4371, 0.404]).view(1, 3, 1, 1) * 255.0).to(DEVICE)
EPS = 1e-6
NORM_EPS = 1e-12


def fake_quant(x, lower, upper, bits):
    """Eq. 1 with a straight-through round; gradients reach x (inside), l and u."""
    upper = torch.maximum(upper, lower + EPS)
    xc = torch.minimum(torch.maximum(x, lower), upper)
    s = (upper - lower) / (2**bits - 1)
    y = (xc - lower) / s
    y = y + (torch.round(y) - y).detach()
    return y * s + lower


class QConv(nn.Conv2d):
    """3x3 conv with fake-quantized weights (symmetric) and input (asymmetric)."""

    def __init__(self, f, bits, weight_range):
        super().__init__(f, f, 3, padding=1)
        self.bits = bits
        self.weight_range = weight_range
        self.a_lower = nn.Parameter(torch.tensor(0.0))
        self.a_upper = nn.Parameter(torch.tensor(1.0))
        if weight_range == "learnable":
            self.w_upper = nn.Parameter(torch.quantile(self.weight.detach().abs().flatten(), 0.99))
        else:
            self.gamma = nn.Parameter(torch.tensor(1.0))
        self.taps = None

    def quant_params(self):
        return [self.a_lower, self.a_upper] + (
            [self.w_upper] if self.weight_range == "learnable" else [self.gamma]
        )

    def forward(self, x):
        if self.weight_range == "learnable":
            u = torch.clamp(self.w_upper, min=EPS)
        else:
            base = torch.quantile(self.weight.detach().abs().flatten(), 0.99)
            u = torch.clamp(base * self.gamma, min=EPS)
        wq = fake_quant(self.weight, -u, u, self.bits)
        xq = fake_quant(x, self.a_lower, self.a_upper, self.bits)
        if self.taps is not None:
            self.taps.append((x, xq))
        return F.conv2d(xq, wq, self.bias, padding=1)


class Block(nn.Module):
    def __init__(self, f, quant):
        super().__init__()
        mk = (lambda: QConv(f, *quant)) if quant else (lambda: nn.Conv2d(f, f, 3, padding=1))
        self.conv1 = mk()
        self.conv2 = mk()

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class EDSR(nn.Module):
    def __init__(self, f, n, quant=None):
        super().__init__()
        self.head = nn.Conv2d(3, f, 3, padding=1)
        self.blocks = nn.Sequential(*[Block(f, quant) for _ in range(n)])
        self.body_conv = nn.Conv2d(f, f, 3, padding=1)
        self.up = nn.Sequential(
            nn.Conv2d(f, 4 * f, 3, padding=1), nn.PixelShuffle(2),
            nn.Conv2d(f, 4 * f, 3, padding=1), nn.PixelShuffle(2),
        )
        self.tail = nn.Conv2d(f, 3, 3, padding=1)

    def qconvs(self):
        return [m for m in self.modules() if isinstance(m, QConv)]

    def forward(self, x):
        x = self.head(x - RGB_MEAN)
        x = x + self.body_conv(self.blocks(x))
        return self.tail(self.up(x)) + RGB_MEAN


def calibrate(model, lr):
    """Learnable activation bounds from the 1st/99th percentiles of one batch (SPEC §2)."""
    qs = model.qconvs()
    for q in qs:
        q.taps = []
    with torch.no_grad():
        model(lr)
        for q in qs:
            x = q.taps[0][0].flatten()
            q.a_lower.copy_(torch.quantile(x[:: max(1, x.numel() // 1_000_000)], 0.01))
            q.a_upper.copy_(torch.quantile(x[:: max(1, x.numel() // 1_000_000)], 0.99))
            q.taps = None


def stepper(f, n, method, batch, patch):
    quant = None if method == "fp32" else (2, "learnable" if method == "plain" else "clipCorrected")
    model = EDSR(f, n, quant).to(DEVICE)
    lr = (torch.rand(batch, 3, patch, patch) * 255).to(DEVICE)
    hr = (torch.rand(batch, 3, patch * 4, patch * 4) * 255).to(DEVICE)
    qps = [p for q in model.qconvs() for p in q.quant_params()]
    qids = {id(p) for p in qps}
    weights = [p for p in model.parameters() if id(p) not in qids]
    groups = [{"params": weights, "lr": 1e-4}]
    if qps:
        groups.append({"params": qps, "lr": 1e-3})
        calibrate(model, lr)
    opt = torch.optim.Adam(groups)
    odm = method == "odm"

    def run():
        opt.zero_grad(set_to_none=True)
        if odm:
            for q in model.qconvs():
                q.taps = []
        loss = F.l1_loss(model(lr), hr)
        if not odm:
            loss.backward()
        else:
            taps = [t for q in model.qconvs() for t in q.taps]
            mis = sum(torch.sqrt(((x - xq.detach()) ** 2).sum() + NORM_EPS) for x, xq in taps)
            params = weights + qps
            g_r = torch.autograd.grad(loss, params, retain_graph=True)
            g_m = torch.autograd.grad(mis, weights, allow_unused=True)
            for p, r in zip(qps, g_r[len(weights):]):
                p.grad = r  # quantizer parameters get g_R only
            for p, r, m in zip(weights, g_r, g_m):
                if m is None:
                    p.grad = r
                    continue
                sim = (F.cosine_similarity(r.flatten(), m.flatten(), dim=0, eps=1e-12) + 1) / 2
                p.grad = r + m * sim * 1e-5
            for q in model.qconvs():
                q.taps = None
        opt.step()
        loss.item()  # one read-back per step

    return run


def seconds(run, n):
    run()  # warm-up
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


CONFIGS = [
    ("tiny EDSR", 32, 4, 4, 24, 5),
    ("EDSR-baseline", 64, 16, 8, 48, 3),
]
METHODS = [("fp32", "FP32"), ("plain", "W2A2 plain QAT"), ("odm", "W2A2 ODM")]


def main():
    quick = "--quick" in sys.argv
    steps = None
    if "--steps" in sys.argv:
        steps = int(sys.argv[sys.argv.index("--steps") + 1])
    rows = []
    stepper(32, 4, "fp32", 4, 24)()  # first-use costs of the process (thread pool, allocator)
    for name, f, n, batch, patch, reps in CONFIGS[:1] if quick else CONFIGS:
        for method, label in METHODS:
            run = stepper(f, n, method, batch, patch)
            rows.append({"name": f"{name} {label}", "seconds": seconds(run, steps or reps)})
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
