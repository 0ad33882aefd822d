"""PyTorch twin of `apga-gpu bench`: the same APGA step (Algorithm 1, paper variant of Eq. 7)
with the same networks (torchvision DenseNet, TernausNet UNet11), batch, image size and Adam,
phase by phase, timed the same way (one warm-up step, median of the measured steps). Prints one
JSON object. `apga-gpu bench` embeds this file and runs it when python3 can import torch and
torchvision; it is never needed to train.

usage: apga_step_torch.py --arch densenet169 --filters 32 --batch 4 --size 64 --steps 3
       [--lambda-zeros 0.01] [--cuda]
"""
import argparse
import os
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


# TernausNet's UNet11 (github.com/ternaus/TernausNet, models.py), with the encoder width tied to
# num_filters (64 = 2 * 32 at the default), as src/models/unet.rs builds it.
class ConvRelu(nn.Module):
    def __init__(self, in_, out):
        super().__init__()
        self.conv = nn.Conv2d(in_, out, 3, padding=1)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.activation(self.conv(x))


class DecoderBlock(nn.Module):
    def __init__(self, in_channels, middle_channels, out_channels):
        super().__init__()
        self.block = nn.Sequential(
            ConvRelu(in_channels, middle_channels),
            nn.ConvTranspose2d(middle_channels, out_channels, kernel_size=3, stride=2, padding=1, output_padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.block(x)


def vgg11_features(e):
    cfg = [e, "M", 2 * e, "M", 4 * e, 4 * e, "M", 8 * e, 8 * e, "M", 8 * e, 8 * e, "M"]
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers)


class UNet11(nn.Module):
    def __init__(self, num_filters=32):
        super().__init__()
        self.pool = nn.MaxPool2d(2, 2)
        self.encoder = vgg11_features(2 * num_filters)
        self.relu = self.encoder[1]
        self.conv1 = self.encoder[0]
        self.conv2 = self.encoder[3]
        self.conv3s = self.encoder[6]
        self.conv3 = self.encoder[8]
        self.conv4s = self.encoder[11]
        self.conv4 = self.encoder[13]
        self.conv5s = self.encoder[16]
        self.conv5 = self.encoder[18]
        nf = num_filters
        self.center = DecoderBlock(nf * 8 * 2, nf * 8 * 2, nf * 8)
        self.dec5 = DecoderBlock(nf * (16 + 8), nf * 8 * 2, nf * 8)
        self.dec4 = DecoderBlock(nf * (16 + 8), nf * 8 * 2, nf * 4)
        self.dec3 = DecoderBlock(nf * (8 + 4), nf * 4 * 2, nf * 2)
        self.dec2 = DecoderBlock(nf * (4 + 2), nf * 2 * 2, nf)
        self.dec1 = ConvRelu(nf * (2 + 1), nf)
        self.final = nn.Conv2d(nf, 1, kernel_size=1)

    def forward(self, x):
        conv1 = self.relu(self.conv1(x))
        conv2 = self.relu(self.conv2(self.pool(conv1)))
        conv3s = self.relu(self.conv3s(self.pool(conv2)))
        conv3 = self.relu(self.conv3(conv3s))
        conv4s = self.relu(self.conv4s(self.pool(conv3)))
        conv4 = self.relu(self.conv4(conv4s))
        conv5s = self.relu(self.conv5s(self.pool(conv4)))
        conv5 = self.relu(self.conv5(conv5s))
        center = self.center(self.pool(conv5))
        dec5 = self.dec5(torch.cat([center, conv5], 1))
        dec4 = self.dec4(torch.cat([dec5, conv4], 1))
        dec3 = self.dec3(torch.cat([dec4, conv3], 1))
        dec2 = self.dec2(torch.cat([dec3, conv2], 1))
        dec1 = self.dec1(torch.cat([dec2, conv1], 1))
        return self.final(dec1)


def classifier(arch):
    if arch == "tiny":
        # src/apga/mod.rs classifier_config("tiny"): growth 8, blocks (2, 2, 2), 16 features.
        return torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2, 2), num_init_features=16, num_classes=2)
    return getattr(torchvision.models, arch)(num_classes=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="densenet169")
    ap.add_argument("--filters", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr-classifier", type=float, default=1e-4)
    ap.add_argument("--lr-policy", type=float, default=1e-4)
    ap.add_argument("--lambda-zeros", type=float, default=0.01)
    ap.add_argument("--cuda", action="store_true")
    args = ap.parse_args()
    dev = "cuda" if args.cuda else "cpu"
    sync = torch.cuda.synchronize if args.cuda else (lambda: None)
    # PyTorch's CUDA default runs convolutions in TF32 on tensor cores (cudnn.allow_tf32);
    # APGA_TORCH_TF32=0 makes it plain float32, as ours, for a like-for-like ratio.
    if os.environ.get("APGA_TORCH_TF32") == "0":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    precision = "tf32 conv" if args.cuda and torch.backends.cudnn.allow_tf32 else "fp32"
    torch.manual_seed(0)
    clf = classifier(args.arch).to(dev).train()
    policy = UNet11(args.filters).to(dev).train()
    opt_c = torch.optim.Adam(clf.parameters(), lr=args.lr_classifier)
    opt_p = torch.optim.Adam(policy.parameters(), lr=args.lr_policy)
    b, s = args.batch, args.size
    # The same deterministic input as src/apga/bench.rs.
    x = (torch.arange(b * 3 * s * s, dtype=torch.int64) * 7919 % 1000).float().div(1000).reshape(b, 3, s, s).to(dev)
    labels = (torch.arange(b) % 2).to(dev)

    def classifier_step(inp):
        opt_c.zero_grad(set_to_none=True)
        loss = F.cross_entropy(clf(inp), labels)
        loss.backward()
        opt_c.step()
        return loss.detach()

    names = ["classifier step", "policy forward", "adversarial forward", "policy step", "aiding step"]
    times = [[] for _ in range(len(names) + 1)]
    baseline = None
    for i in range(args.steps + 1):
        sync()
        t0 = t = time.perf_counter()

        def lap(k):
            nonlocal t
            sync()
            now = time.perf_counter()
            if i > 0 or args.steps == 0:
                times[k].append((now - t) * 1e3)
            t = now

        l_orig = classifier_step(x)
        lap(0)
        p = torch.sigmoid(policy(x))
        lap(1)
        with torch.no_grad():
            a = (p >= 0.5).float()
            # The reward forward leaves the classifier's running statistics alone (eval mode).
            clf.eval()
            l_adv = F.cross_entropy(clf(x * (1 - a)), labels)
            clf.train()
        lap(2)
        reward = (l_adv - l_orig).item()
        b_prev = reward if baseline is None else baseline
        adv = reward - b_prev
        l_pg = F.binary_cross_entropy(p, a) * adv + args.lambda_zeros * F.binary_cross_entropy(p, torch.zeros_like(p))
        opt_p.zero_grad(set_to_none=True)
        l_pg.backward()
        opt_p.step()
        baseline = reward
        lap(3)
        with torch.no_grad():
            keep = (torch.sigmoid(policy(x)) > 0.5).float()
        classifier_step(x * keep)
        lap(4)
        if i > 0 or args.steps == 0:
            times[5].append((time.perf_counter() - t0) * 1e3)
    med = [statistics.median(v) for v in times]
    print(json.dumps({
        "torch": torch.__version__,
        "device": dev if not args.cuda else f"{torch.cuda.get_device_name(0)}, {precision}",
        "threads": torch.get_num_threads(),
        "phases_ms": dict(zip(names, med[:-1])),
        "step_ms": med[-1],
    }))


if __name__ == "__main__":
    main()
