//! TernausNet UNet11 (Iglovikov & Shvets 2018): a VGG11 encoder and a decoder of
//! ConvReLU + ConvTranspose2d(k3, s2, p1, output_padding 1) + ReLU blocks with skip
//! concatenations, under TernausNet's state-dict keys. The paper's policy M_p: its output is
//! one channel of logits per pixel; P = sigmoid(logits) is applied outside the network.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{Conv2d, ConvInit, ConvTranspose2d, Init, Module, Named};
use crate::ops;
use crate::tensor::Tensor;

/// `encoder.N` index of each encoder convolution in torchvision's VGG11 `features`, which
/// TernausNet's state dicts also carry (the module is registered under both names).
pub const ENCODER_ALIASES: [(&str, usize); 8] = [
    ("conv1", 0),
    ("conv2", 3),
    ("conv3s", 6),
    ("conv3", 8),
    ("conv4s", 11),
    ("conv4", 13),
    ("conv5s", 16),
    ("conv5", 18),
];

/// `(file prefix, model prefix)` pairs for loading `encoder.N.*` keys.
pub fn encoder_aliases() -> Vec<(String, String)> {
    ENCODER_ALIASES
        .iter()
        .map(|(name, i)| (format!("encoder.{i}."), format!("{name}.")))
        .collect()
}

struct ConvRelu {
    conv: Conv2d,
}

impl ConvRelu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::relu(&self.conv.forward(x)?)
    }
}

struct DecoderBlock {
    conv_relu: ConvRelu,
    up: ConvTranspose2d,
}

impl DecoderBlock {
    fn new(
        gpu: &Gpu,
        init: &mut Init,
        prefix: &str,
        cin: usize,
        mid: usize,
        cout: usize,
    ) -> Result<Self> {
        Ok(DecoderBlock {
            conv_relu: ConvRelu {
                conv: Conv2d::new(
                    gpu,
                    init,
                    &format!("{prefix}.block.0.conv"),
                    cin,
                    mid,
                    3,
                    1,
                    1,
                    true,
                    ConvInit::Default,
                )?,
            },
            up: ConvTranspose2d::new(
                gpu,
                init,
                &format!("{prefix}.block.1"),
                mid,
                cout,
                3,
                2,
                1,
                1,
            )?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::relu(&self.up.forward(&self.conv_relu.forward(x)?)?)
    }
    fn named(&self) -> Vec<Named> {
        let mut v = self.conv_relu.conv.named();
        v.extend(self.up.named());
        v
    }
}

/// UNet11 with `num_filters` decoder filters (TernausNet's default 32; the encoder is VGG11
/// with 2 * num_filters channels in its first layer, 64 at the default).
pub struct UNet11 {
    pub num_filters: usize,
    /// Images per pass through the network; `None` chooses the most whose largest
    /// activation fits the adapter's largest storage binding (see [`UNet11::forward`]).
    pub max_images_per_pass: Option<usize>,
    encoder: Vec<Conv2d>,
    center: DecoderBlock,
    dec5: DecoderBlock,
    dec4: DecoderBlock,
    dec3: DecoderBlock,
    dec2: DecoderBlock,
    dec1: ConvRelu,
    final_conv: Conv2d,
}

impl UNet11 {
    /// A freshly initialised UNet11: encoder as torchvision's VGG (Kaiming-normal fan-out,
    /// bias 0), decoder with PyTorch's default initialisation, seeded.
    pub fn new(gpu: &Gpu, num_filters: usize, seed: u64) -> Result<UNet11> {
        if num_filters == 0 {
            return Err(Error::shape("UNet11", "num_filters must be at least 1"));
        }
        let mut init = Init::new(seed);
        let nf = num_filters;
        let e = 2 * nf;
        let widths = [
            (3, e),
            (e, 2 * e),
            (2 * e, 4 * e),
            (4 * e, 4 * e),
            (4 * e, 8 * e),
            (8 * e, 8 * e),
            (8 * e, 8 * e),
            (8 * e, 8 * e),
        ];
        let encoder = ENCODER_ALIASES
            .iter()
            .zip(widths)
            .map(|((name, _), (cin, cout))| {
                Conv2d::new(
                    gpu,
                    &mut init,
                    name,
                    cin,
                    cout,
                    3,
                    1,
                    1,
                    true,
                    ConvInit::KaimingNormalFanOut,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(UNet11 {
            num_filters,
            max_images_per_pass: None,
            encoder,
            center: DecoderBlock::new(gpu, &mut init, "center", nf * 16, nf * 16, nf * 8)?,
            dec5: DecoderBlock::new(gpu, &mut init, "dec5", nf * 24, nf * 16, nf * 8)?,
            dec4: DecoderBlock::new(gpu, &mut init, "dec4", nf * 24, nf * 16, nf * 4)?,
            dec3: DecoderBlock::new(gpu, &mut init, "dec3", nf * 12, nf * 8, nf * 2)?,
            dec2: DecoderBlock::new(gpu, &mut init, "dec2", nf * 6, nf * 4, nf)?,
            dec1: ConvRelu {
                conv: Conv2d::new(
                    gpu,
                    &mut init,
                    "dec1.conv",
                    nf * 3,
                    nf,
                    3,
                    1,
                    1,
                    true,
                    ConvInit::Default,
                )?,
            },
            final_conv: Conv2d::new(
                gpu,
                &mut init,
                "final",
                nf,
                1,
                1,
                1,
                0,
                true,
                ConvInit::Default,
            )?,
        })
    }

    /// Per-pixel logits [n, 1, h, w] of images [n, 3, h, w]; h and w must be multiples of 32.
    ///
    /// UNet11 has no batch statistics, so the batch may run in groups of images with the
    /// same result (and, through the tape, the same gradients). It does when the largest
    /// activation, the decoder's last concatenation [n, 3 * num_filters, h, w], would exceed
    /// the adapter's largest storage binding (128 MiB on lavapipe: the paper's batch of 25 at
    /// 224x224 needs 482 MB there); peak memory is the same either way.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [n, _, h, w] = x.dims4("UNet11 input")?;
        let per_image = 3 * self.num_filters.max(1) * h * w;
        let fits = (x.gpu().max_binding_elems() / per_image.max(1)).max(1);
        let group = self.max_images_per_pass.unwrap_or(fits).clamp(1, n.max(1));
        if group >= n {
            return self.forward_images(x);
        }
        let parts = (0..n)
            .step_by(group)
            .map(|i0| self.forward_images(&ops::narrow(x, 0, i0, group.min(n - i0))?))
            .collect::<Result<Vec<_>>>()?;
        ops::concat(&parts.iter().collect::<Vec<_>>(), 0)
    }

    fn forward_images(&self, x: &Tensor) -> Result<Tensor> {
        let [_, c, h, w] = x.dims4("UNet11 input")?;
        if c != 3 || !h.is_multiple_of(32) || !w.is_multiple_of(32) || h == 0 || w == 0 {
            return Err(Error::shape(
                "UNet11",
                format!(
                    "expects [n, 3, h, w] with h and w multiples of 32 (five 2x2 poolings), got {:?}",
                    x.shape()
                ),
            ));
        }
        let pool = |t: &Tensor| ops::max_pool2d(t, 2, 2, 0);
        let conv =
            |i: usize, t: &Tensor| -> Result<Tensor> { ops::relu(&self.encoder[i].forward(t)?) };
        let conv1 = conv(0, x)?;
        let conv2 = conv(1, &pool(&conv1)?)?;
        let conv3s = conv(2, &pool(&conv2)?)?;
        let conv3 = conv(3, &conv3s)?;
        let conv4s = conv(4, &pool(&conv3)?)?;
        let conv4 = conv(5, &conv4s)?;
        let conv5s = conv(6, &pool(&conv4)?)?;
        let conv5 = conv(7, &conv5s)?;
        let center = self.center.forward(&pool(&conv5)?)?;
        let dec5 = self.dec5.forward(&ops::concat(&[&center, &conv5], 1)?)?;
        let dec4 = self.dec4.forward(&ops::concat(&[&dec5, &conv4], 1)?)?;
        let dec3 = self.dec3.forward(&ops::concat(&[&dec4, &conv3], 1)?)?;
        let dec2 = self.dec2.forward(&ops::concat(&[&dec3, &conv2], 1)?)?;
        let dec1 = self.dec1.forward(&ops::concat(&[&dec2, &conv1], 1)?)?;
        self.final_conv.forward(&dec1)
    }
}

impl Module for UNet11 {
    fn named(&self) -> Vec<Named> {
        let mut v: Vec<Named> = self.encoder.iter().flat_map(|c| c.named()).collect();
        for d in [&self.center, &self.dec5, &self.dec4, &self.dec3, &self.dec2] {
            v.extend(d.named());
        }
        v.extend(self.dec1.conv.named());
        v.extend(self.final_conv.named());
        v
    }
}
