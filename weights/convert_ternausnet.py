"""Converts TernausNet's Carvana-pretrained UNet11 checkpoint (`TernausNet.pt`) into a
.safetensors state dict that apga-gpu loads with `--segmenter-weights`.

TernausNet (github.com/ternaus/TernausNet, unet_models.py) saved its weights as
`torch.save({'model': state_dict, ...})` and loaded them with `model.load_state_dict(state['model'])`
into UNet11(num_filters=32). This script accepts that form, `{'state_dict': sd}` or a bare state
dict, strips DataParallel's `module.` prefixes, checks every key and shape against TernausNet's
UNet11 (num_filters inferred from `final.weight`, [1, num_filters, 1, 1]), and writes contiguous
float32 tensors under TernausNet's keys: `conv1.weight` ... `conv5.bias`, their aliases
`encoder.N.*` (the same modules, registered under both names, as PyTorch's state_dict has them,
so that the file also loads back with `load_state_dict(strict=True)`; apga-gpu's loader accepts
either name, and `--no-aliases` leaves the `encoder.N.*` copies out), `center.*`, `dec5.*` ...
`dec1.*`, `final.*`. Prints the number of tensors, the parameter count and the SHA-256 of the
output.

usage:
  python3 weights/convert_ternausnet.py PATH/TernausNet.pt OUT.safetensors [--no-aliases]
  python3 weights/convert_ternausnet.py --self-test [--keep DIR] [--filters 32]

--self-test builds a TernausNet UNet11 with random weights, saves it as DataParallel would
({'model': state_dict} with `module.` prefixes), converts it, reloads the result into a fresh
UNet11 with load_state_dict(strict=True) and checks every tensor and the output on a random
1x3x64x64 input for equality; with --keep DIR it keeps the converted file
(DIR/TernausNet_selftest.safetensors) and the input and reference output
(DIR/TernausNet_selftest_io.safetensors: `x` [1, 3, 64, 64], `out` [1, 1, 64, 64] logits) for a
Rust test. Needs: pip install torch safetensors numpy (no torchvision, no network).
Exit status: 0 on success, 1 on a checkpoint that does not fit or a failed self-test, 2 on
usage errors."""
import argparse
import collections.abc
import contextlib
import hashlib
import os
import re
import shutil
import sys
import tempfile
from collections import OrderedDict

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))

# TernausNet UNet11's encoder convolutions: attribute name -> index in VGG11's `features`
# (src/models/unet.rs ENCODER_ALIASES).
ENCODER_ALIASES = [
    ("conv1", 0),
    ("conv2", 3),
    ("conv3s", 6),
    ("conv3", 8),
    ("conv4s", 11),
    ("conv4", 13),
    ("conv5s", 16),
    ("conv5", 18),
]
ALIAS_PAIRS = [
    (f"{name}.{p}", f"encoder.{i}.{p}") for name, i in ENCODER_ALIASES for p in ("weight", "bias")
]
ALIAS_KEYS = {alias for _, alias in ALIAS_PAIRS}


# --- TernausNet's UNet11 (unet_models.py), module for module, so the state-dict keys match.
# torchvision's vgg11().features is rebuilt here (same layers, same indices) so that no
# torchvision is needed; its width is 2 * num_filters (64 at TernausNet's 32, where it equals
# VGG11's), as src/models/unet.rs and benches/apga_step_torch.py tie it.
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
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers)


# TernausNet's UNet11, as in benches/apga_step_torch.py; repeated here because that twin
# imports torchvision at the top, and this converter needs PyTorch alone.
class UNet11(nn.Module):
    def __init__(self, num_filters=32):
        super().__init__()
        self.pool = nn.MaxPool2d(2, 2)
        self.encoder = vgg11_features(2 * num_filters)
        self.relu = self.encoder[1]
        for name, i in ENCODER_ALIASES:
            setattr(self, name, self.encoder[i])
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
        # Logits: TernausNet's forward applied a sigmoid until 2018-03 (commit dd511bc), which
        # changes nothing in the weights; apga-gpu applies it outside the network.
        return self.final(dec1)


class ConvertError(Exception):
    pass


# --- loading


def load_checkpoint(path):
    """torch.load on the CPU: first restricted to tensors and containers (weights_only=True),
    then, if that refuses the file, unrestricted (weights_only=False: runs the pickle, so only for
    a file you trust, such as the authors' committed TernausNet.pt)."""
    if not os.path.isfile(path):
        raise ConvertError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except TypeError:  # PyTorch < 1.13 has no weights_only
        return torch.load(path, map_location="cpu")
    except Exception as e:  # noqa: BLE001  (pickle.UnpicklingError, RuntimeError, ...)
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        print(f"note: weights_only=True refused {path} ({type(e).__name__}: {first}); "
              "retrying with weights_only=False", file=sys.stderr)
        return torch.load(path, map_location="cpu", weights_only=False)


def extract_state_dict(obj):
    """(state dict, where it was found) from {'model': sd}, {'state_dict': sd}, a bare state
    dict or a pickled module."""
    if isinstance(obj, nn.Module):
        return obj.state_dict(), "a pickled nn.Module"
    if not isinstance(obj, collections.abc.Mapping):
        raise ConvertError(f"the checkpoint is a {type(obj).__name__}, not a dict or state dict")
    for container in ("model", "state_dict"):
        if container in obj:
            inner = obj[container]
            if isinstance(inner, nn.Module):
                return inner.state_dict(), f"checkpoint['{container}'] (a pickled nn.Module)"
            if isinstance(inner, collections.abc.Mapping):
                return inner, f"checkpoint['{container}']"
            raise ConvertError(f"checkpoint['{container}'] is a {type(inner).__name__}, not a state dict")
    non_tensors = [k for k, v in obj.items() if not torch.is_tensor(v)]
    if non_tensors:
        raise ConvertError(
            "the checkpoint has neither a 'model' nor a 'state_dict' entry, and is not a bare state "
            f"dict (entries that are not tensors: {', '.join(map(str, non_tensors[:10]))})")
    return obj, "a bare state dict"


def strip_prefixes(sd):
    out, stripped = OrderedDict(), 0
    for k, v in sd.items():
        if not isinstance(k, str):
            raise ConvertError(f"state-dict key {k!r} is not a string")
        n = k
        while n.startswith("module."):
            n = n[len("module."):]
        stripped += n != k
        if n in out:
            raise ConvertError(f"two keys become {n!r} once `module.` prefixes are stripped")
        if not torch.is_tensor(v):
            raise ConvertError(f"{k}: a {type(v).__name__}, not a tensor")
        out[n] = v
    return out, stripped


def expected_shapes(num_filters):
    """TernausNet UNet11's state-dict keys and shapes (built on the meta device when there is one,
    so nothing is allocated)."""
    with torch.device("meta") if _has_meta() else contextlib.nullcontext():
        model = UNet11(num_filters)
    return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())


def _has_meta():
    try:
        with torch.device("meta"):
            pass
        return True
    except Exception:  # noqa: BLE001  (PyTorch < 2.0: torch.device is no context manager)
        return False


def check_and_convert(sd, no_aliases=False):
    """TernausNet UNet11 state dict (prefixes stripped) -> (OrderedDict of contiguous float32
    tensors, num_filters, notes). Raises ConvertError listing every missing, unexpected and
    mis-shaped key."""
    notes = []
    fw = sd.get("final.weight")
    if fw is None:
        raise ConvertError(
            "no `final.weight` (TernausNet UNet11's last 1x1 convolution, [1, num_filters, 1, 1]); "
            f"is this a UNet11 checkpoint? Its first keys: {', '.join(list(sd)[:8])}")
    if fw.dim() != 4 or fw.shape[0] != 1 or fw.shape[2:] != (1, 1) or fw.shape[1] < 1:
        raise ConvertError(f"final.weight has shape {list(fw.shape)}; expected [1, num_filters, 1, 1]")
    nf = int(fw.shape[1])
    expected = expected_shapes(nf)

    sd = OrderedDict(sd)
    # TernausNet's conv1..conv5 are encoder[0..18] under a second name; a state dict has both.
    # Fill in either name from the other when one is absent (e.g. a deduplicated save), and
    # refuse a file whose two copies differ.
    for canon, alias in ALIAS_PAIRS:
        if canon in sd and alias not in sd:
            sd[alias] = sd[canon]
            notes.append(f"{alias} filled in from {canon}")
        elif alias in sd and canon not in sd:
            sd[canon] = sd[alias]
            notes.append(f"{canon} filled in from {alias}")
        elif canon in sd and alias in sd:
            a, b = sd[canon], sd[alias]
            if a.shape != b.shape or not torch.equal(a.float(), b.float()):
                raise ConvertError(
                    f"{canon} and {alias} differ, but in TernausNet's UNet11 they are the same module")

    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [f"{k}: checkpoint {list(sd[k].shape)}, UNet11({nf}) {list(s)}"
                  for k, s in expected.items() if k in sd and tuple(sd[k].shape) != s]
    not_float = [f"{k}: {sd[k].dtype}" for k in expected if k in sd and not sd[k].is_floating_point()]
    if missing or unexpected or mismatched or not_float:
        lines = [f"the checkpoint does not fit TernausNet's UNet11(num_filters={nf}) "
                 f"(num_filters from final.weight {list(fw.shape)}):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
        if not_float:
            lines.append(f"  not floating point: {', '.join(not_float)}")
        if nf != 32 and mismatched:
            lines.append("  (TernausNet's own UNet11 only fits num_filters=32: its VGG11 encoder is "
                         "64..512 wide whatever num_filters is; apga-gpu ties it to 2 * num_filters)")
        raise ConvertError("\n".join(lines))

    dtypes = sorted({str(sd[k].dtype) for k in expected})
    if dtypes != ["torch.float32"]:
        notes.append(f"converted {', '.join(dtypes)} to float32")
    out = OrderedDict()
    for k in expected:  # TernausNet's order; safetensors sorts the keys anyway
        if no_aliases and k in ALIAS_KEYS:
            continue
        out[k] = sd[k].detach().to(torch.float32).contiguous().clone()
    return out, nf, notes


def plain_mode(path):
    """The mode open() would have given (mkstemp and safetensors create files 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(src, dst, no_aliases=False, quiet=False):
    ckpt = load_checkpoint(src)
    sd, found = extract_state_dict(ckpt)
    sd, stripped = strip_prefixes(sd)
    tensors, nf, notes = check_and_convert(sd, no_aliases=no_aliases)
    src_hash = sha256(src)
    # Written beside the target and renamed, so a failure never leaves a partial file.
    d = os.path.dirname(os.path.abspath(dst))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".convert_ternausnet.", suffix=".safetensors", dir=d)
    os.close(fd)
    try:
        # No source hash in the metadata: the output depends on the tensors alone (torch.save
        # files of the same weights differ from save to save).
        save_file(tensors, tmp, metadata={"format": "pt"})
        plain_mode(tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    params = sum(v.numel() for k, v in tensors.items() if k not in ALIAS_KEYS)
    n_alias = sum(k in ALIAS_KEYS for k in tensors)
    digest = sha256(dst)
    if not quiet:
        print(f"{src}: state dict in {found}, {len(sd)} keys, `module.` stripped from {stripped}, "
              f"num_filters {nf}, sha256 {src_hash}")
        for n in notes:
            print(f"  note: {n}")
        print(f"{dst}: {len(tensors)} tensors ({n_alias} of them encoder.N aliases of conv1..conv5), "
              f"{params:,} parameters, {os.path.getsize(dst):,} bytes, sha256 {digest}")
    return {"tensors": len(tensors), "params": params, "num_filters": nf, "sha256": digest,
            "stripped": stripped, "notes": notes}


# --- self-test


def self_test(keep=None, num_filters=32):
    failures = []

    def check(ok, what):
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    tmp = tempfile.mkdtemp(prefix="ternausnet_selftest.")
    try:
        torch.manual_seed(0)
        ref = UNet11(num_filters).eval()
        ref_sd = ref.state_dict()
        # As DataParallel training saved it (TernausNet's train.py also saved epoch and step).
        ckpt = {"model": OrderedDict(("module." + k, v) for k, v in ref_sd.items()), "epoch": 3, "step": 1000}
        src = os.path.join(tmp, "TernausNet.pt")
        torch.save(ckpt, src)
        dst = os.path.join(tmp, "TernausNet_selftest.safetensors")
        print(f"self-test: UNet11(num_filters={num_filters}), random weights, saved as "
              "{'model': state_dict} with `module.` prefixes")
        info = convert(src, dst)

        keys_file = os.path.join(HERE, "..", "tests", "fixtures", "full_size_keys.json")
        if num_filters == 32 and os.path.exists(keys_file):
            import json
            with open(keys_file) as f:
                fixture = [(k, tuple(s)) for k, s in json.load(f)["unet11"]]
            ours = [(k, tuple(v.shape)) for k, v in ref_sd.items()]
            check(ours == fixture, "UNet11 keys and shapes equal tests/fixtures/full_size_keys.json['unet11'] "
                  f"({len(fixture)} entries)")

        loaded = load_file(dst)
        check(info["stripped"] == len(ref_sd), f"`module.` stripped from all {len(ref_sd)} keys")
        check(set(loaded) == set(ref_sd), f"converted keys == UNet11 state-dict keys ({len(loaded)})")
        check(all(v.dtype == torch.float32 and v.is_contiguous() for v in loaded.values()),
              "all tensors contiguous float32")
        torch.manual_seed(1)
        fresh = UNet11(num_filters).eval()
        try:
            result = fresh.load_state_dict(loaded, strict=True)
            check(not result.missing_keys and not result.unexpected_keys, "load_state_dict(strict=True)")
        except RuntimeError as e:
            check(False, f"load_state_dict(strict=True): {e}")
        fresh_sd = fresh.state_dict()
        unequal = [k for k in ref_sd if not torch.equal(ref_sd[k], fresh_sd[k])]
        check(not unequal, f"every tensor equal after the round trip ({len(ref_sd)})"
              + (f"; differ: {', '.join(unequal)}" if unequal else ""))
        torch.manual_seed(2)
        x = torch.rand(1, 3, 64, 64)
        with torch.no_grad():
            y_ref, y_new = ref(x), fresh(x)
        same = torch.equal(y_ref, y_new)
        check(same and tuple(y_ref.shape) == (1, 1, 64, 64),
              f"forward output identical on a random 1x3x64x64 input, shape {list(y_ref.shape)}"
              + ("" if same else f", max |diff| {(y_ref - y_new).abs().max().item():.3g}"))

        # The other accepted forms, and the errors, on a narrow UNet11 (cheap).
        small = UNet11(2).state_dict()
        for name, obj in [("bare state dict", OrderedDict(small)),
                          ("{'state_dict': sd}", {"state_dict": OrderedDict(small)}),
                          ("{'model': sd} without encoder.N aliases",
                           {"model": OrderedDict((k, v) for k, v in small.items() if k not in ALIAS_KEYS)}),
                          ("{'model': sd} with only encoder.N names",
                           {"model": OrderedDict((k, v) for k, v in small.items()
                                                 if k not in {c for c, _ in ALIAS_PAIRS})})]:
            p = os.path.join(tmp, "form.pt")
            torch.save(obj, p)
            try:
                r = convert(p, os.path.join(tmp, "form.safetensors"), quiet=True)
                back = load_file(os.path.join(tmp, "form.safetensors"))
                ok = r["num_filters"] == 2 and set(back) == set(small) and all(
                    torch.equal(back[k], small[k]) for k in small)
                check(ok, f"accepts a {name}")
            except ConvertError as e:
                check(False, f"accepts a {name}: {e}")
        bad = OrderedDict(small)
        del bad["dec3.block.1.bias"]
        bad["extra.weight"] = torch.zeros(1)
        bad["dec1.conv.bias"] = torch.zeros(3)
        p = os.path.join(tmp, "bad.pt")
        torch.save({"model": bad}, p)
        try:
            convert(p, os.path.join(tmp, "bad.safetensors"), quiet=True)
            check(False, "refuses a checkpoint with a missing, an unexpected and a mis-shaped key")
        except ConvertError as e:
            msg = str(e)
            ok = all(s in msg for s in ("missing keys (1): dec3.block.1.bias", "unexpected keys (1): extra.weight",
                                        "dec1.conv.bias: checkpoint [3], UNet11(2) [2]"))
            ok = ok and not os.path.exists(os.path.join(tmp, "bad.safetensors"))
            check(ok, "refuses a checkpoint with a missing, an unexpected and a mis-shaped key, naming each")
            if not ok:
                print(msg)
        # --no-aliases: only the canonical names.
        na = os.path.join(tmp, "noalias.safetensors")
        convert(src, na, no_aliases=True, quiet=True)
        back = load_file(na)
        check(set(back) == set(ref_sd) - ALIAS_KEYS and all(torch.equal(back[k], ref_sd[k]) for k in back),
              f"--no-aliases writes the {len(ref_sd) - len(ALIAS_KEYS)} canonical tensors only")

        if keep:
            os.makedirs(keep, exist_ok=True)
            kept = os.path.join(keep, "TernausNet_selftest.safetensors")
            shutil.copyfile(dst, kept)
            plain_mode(kept)
            io = os.path.join(keep, "TernausNet_selftest_io.safetensors")
            save_file({"x": x.contiguous(), "out": y_ref.contiguous()}, io)
            plain_mode(io)
            print(f"kept {kept} ({os.path.getsize(kept):,} bytes, sha256 {sha256(kept)})")
            print(f"kept {io} (x [1, 3, 64, 64], out [1, 1, 64, 64] logits of the reference UNet11)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("PASS" if not failures else f"FAIL ({len(failures)} check(s) failed)")
    return not failures


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", help="TernausNet.pt (torch.save of {'model': state_dict})")
    ap.add_argument("output", nargs="?", help="output .safetensors")
    ap.add_argument("--no-aliases", action="store_true",
                    help="leave out the encoder.N.* copies of conv1..conv5 (apga-gpu does not need them; "
                         "PyTorch's strict load_state_dict does)")
    ap.add_argument("--self-test", action="store_true", help="round-trip a random UNet11 and check it")
    ap.add_argument("--keep", metavar="DIR", help="with --self-test: keep the converted file and an io file in DIR")
    ap.add_argument("--filters", type=int, default=32, help="with --self-test: num_filters (default 32)")
    args = ap.parse_args(argv)
    if args.self_test:
        if args.checkpoint or args.output:
            ap.error("--self-test takes no checkpoint or output")
        if args.filters < 1:
            ap.error("--filters must be at least 1")
        return 0 if self_test(args.keep, args.filters) else 1
    if args.keep:
        ap.error("--keep only goes with --self-test")
    if not args.checkpoint or not args.output:
        ap.error("need CHECKPOINT and OUTPUT (or --self-test)")
    try:
        convert(args.checkpoint, args.output, no_aliases=args.no_aliases)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
