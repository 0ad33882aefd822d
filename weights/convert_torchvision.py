"""Converts torchvision's ImageNet weights into .safetensors files apga-gpu loads:

  densenet169_imagenet.safetensors  torchvision densenet169(weights=IMAGENET1K_V1), 1000-class
                                    head (replace it when fine-tuning to your class count)
  unet11_vgg11_imagenet.safetensors a TernausNet UNet11 whose encoder is torchvision's ImageNet
                                    VGG11 (features), decoder freshly initialised by PyTorch, as
                                    TernausNet's UNet11(pretrained=True) builds it (the Carvana
                                    TernausNet weights are no longer published)

Run wherever PyTorch, torchvision and the internet are available:
  python3 weights/convert_torchvision.py [OUT_DIR]      (default: weights/)
and it prints each file's SHA-256. Needs: pip install torch torchvision safetensors."""
import hashlib
import os
import sys

import torch
import torchvision
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures"))
from make_model_fixtures import UNet11  # noqa: E402  (TernausNet's layout and keys)


def save(sd, path):
    # Every key, shared modules under both names (conv1.* and encoder.0.*), as state_dict has them.
    save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, path)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    print(f"{path}  sha256 {digest}")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    os.makedirs(out, exist_ok=True)
    dn = torchvision.models.densenet169(weights=torchvision.models.DenseNet169_Weights.IMAGENET1K_V1)
    save(dn.state_dict(), os.path.join(out, "densenet169_imagenet.safetensors"))

    torch.manual_seed(0)
    unet = UNet11(num_filters=32)
    vgg = torchvision.models.vgg11(weights=torchvision.models.VGG11_Weights.IMAGENET1K_V1).features
    unet.encoder.load_state_dict(vgg.state_dict())
    save(unet.state_dict(), os.path.join(out, "unet11_vgg11_imagenet.safetensors"))


if __name__ == "__main__":
    main()
