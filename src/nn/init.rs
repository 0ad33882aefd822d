//! Seeded parameter initialisation with PyTorch's schemes.

use rand::{rngs::StdRng, Rng, SeedableRng};

/// A seeded generator for initial weights (same seed, same network).
pub struct Init {
    rng: StdRng,
}

impl Init {
    pub fn new(seed: u64) -> Init {
        Init {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// `n` samples of N(0, std^2) (Box-Muller).
    pub fn normal(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u1: f64 = self.rng.random_range(f64::MIN_POSITIVE..1.0);
                let u2: f64 = self.rng.random();
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32 * std
            })
            .collect()
    }

    /// `n` samples of U(-bound, bound).
    pub fn uniform(&mut self, n: usize, bound: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                if bound > 0.0 {
                    self.rng.random_range(-bound..bound)
                } else {
                    0.0
                }
            })
            .collect()
    }
}

/// `fan_in` as `torch.nn.init._calculate_fan_in_and_fan_out` computes it: dimension 1 times
/// the receptive field (for a ConvTranspose2d weight [in, out, k, k] that is out * k * k).
pub fn fan_in(shape: &[usize]) -> usize {
    shape.get(1).copied().unwrap_or(1) * shape.iter().skip(2).product::<usize>()
}

/// `fan_out`: dimension 0 times the receptive field.
pub fn fan_out(shape: &[usize]) -> usize {
    shape.first().copied().unwrap_or(1) * shape.iter().skip(2).product::<usize>()
}
