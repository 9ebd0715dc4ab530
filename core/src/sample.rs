//! Sampling the next token from logits: greedy, or llama.cpp's default chain of repetition
//! penalty, top-k, top-p, min-p and temperature, then a seeded Gumbel-max draw. The same
//! seed and the same logits give the same tokens on every platform.

use alloc::vec::Vec;

/// How to pick tokens.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplerConfig {
    /// 0 (or less) is greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recent tokens by this; 1 is off.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Default for SamplerConfig {
    /// llama.cpp's defaults: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no penalty.
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Whether the values make sense; the message says which does not.
    pub fn validate(&self) -> Result<(), &'static str> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err("temperature must be 0 or more");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err("top-p must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err("min-p must be in [0, 1]");
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return Err("repeat penalty must be positive");
        }
        Ok(())
    }
}

/// SplitMix64 to seed, xoshiro256** to draw: small, fast and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(GOLDEN_GAMMA);
            splitmix64_mix(x)
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }
}

/// ⌊2^64 / φ⌋, an odd number: SplitMix64's step, and the multiplier that spreads token ids over
/// the key's bits in [`gumbel`].
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finaliser: 64 well-mixed bits from any 64.
fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Picks tokens from logits.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplerConfig,
    rng: Rng,
    candidates: Vec<(u32, f32)>,
}

/// The index of the largest value; the first one on ties. NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &v) in logits.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0 as u32
}

impl Sampler {
    /// A sampler seeded from `config.seed`.
    pub fn new(config: SamplerConfig) -> Self {
        let rng = Rng::new(config.seed);
        Self {
            config,
            rng,
            candidates: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Picks the next token from `logits` (changed in place by the penalty); `recent` holds the
    /// tokens so far, latest last.
    pub fn sample(&mut self, logits: &mut [f32], recent: &[u32]) -> u32 {
        let c = &self.config;
        if c.repeat_penalty != 1.0 {
            let start = recent.len().saturating_sub(c.repeat_last_n);
            let mut seen = recent[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 {
                        *l / c.repeat_penalty
                    } else {
                        *l * c.repeat_penalty
                    };
                }
            }
        }
        if c.temperature <= 0.0 {
            return argmax(logits);
        }
        let cand = &mut self.candidates;
        cand.clear();
        cand.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (i as u32, l)),
        );
        if cand.is_empty() {
            return 0;
        }
        // Most likely first; ties keep id order so the result never depends on the sort.
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if c.top_k > 0 && c.top_k < cand.len() {
            cand.select_nth_unstable_by(c.top_k - 1, by_logit);
            cand.truncate(c.top_k);
        }
        cand.sort_unstable_by(by_logit);
        let max = cand[0].1;
        let probs: Vec<f64> = cand
            .iter()
            .map(|&(_, l)| libm::exp(f64::from(l - max)))
            .collect();
        let total: f64 = probs.iter().sum();
        let mut keep = cand.len();
        if c.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, p) in probs.iter().enumerate() {
                acc += p / total;
                if acc >= f64::from(c.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        if c.min_p > 0.0 {
            // probs[0] is the largest, exp(0) = 1.
            keep = probs[..keep]
                .iter()
                .take_while(|&&p| p >= f64::from(c.min_p))
                .count()
                .max(1);
        }
        cand.truncate(keep);
        // The draw is Gumbel-max: each kept token's scaled logit plus Gumbel noise keyed by the
        // token's id, the largest wins. That picks token i with probability exp(l_i / T) / sum,
        // as a draw from the running total would, but the noise a token gets does not depend on
        // where it sorts. Two computations of the same model whose logits differ in the last
        // digits (quantized against F32 activations, CPU against GPU) then pick the same token
        // unless the winner's margin is that small, instead of whenever two close candidates
        // trade places in the order.
        let key = self.rng.next_u64();
        let inv_t = 1.0 / f64::from(c.temperature);
        let mut best = (cand[0].0, f64::NEG_INFINITY);
        for &(id, l) in cand.iter() {
            let score = f64::from(l - max) * inv_t + gumbel(key, id);
            if score > best.1 || (score == best.1 && id < best.0) {
                best = (id, score);
            }
        }
        best.0
    }
}

/// Standard Gumbel noise for token `id` under the step's `key`: `-ln(-ln u)`, with `u` uniform
/// in (0, 1) from a SplitMix64 finaliser of the two.
fn gumbel(key: u64, id: u32) -> f64 {
    let z = splitmix64_mix(key ^ u64::from(id).wrapping_mul(GOLDEN_GAMMA));
    let u = ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -libm::log(-libm::log(u))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect()
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN]), 1);
        let mut s = Sampler::new(SamplerConfig::greedy());
        let mut l = logits();
        let want = argmax(&l);
        assert_eq!(s.sample(&mut l, &[]), want);
    }

    #[test]
    fn same_seed_same_tokens() {
        let config = SamplerConfig {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 42,
            ..SamplerConfig::default()
        };
        let draw = |config: SamplerConfig| {
            let mut s = Sampler::new(config);
            (0..50)
                .map(|_| s.sample(&mut logits(), &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(config.clone());
        assert_eq!(a, draw(config.clone()));
        assert_ne!(a, draw(SamplerConfig { seed: 43, ..config }));
        // A hot, unfiltered draw does not always take the maximum.
        assert!(a.iter().any(|&t| t != argmax(&logits())));
    }

    #[test]
    fn draws_follow_the_softmax() {
        // exp(l / T) with T = 1: probabilities 1/7, 2/7 and 4/7.
        let l = [0.0, core::f32::consts::LN_2, 2.0 * core::f32::consts::LN_2];
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 7,
            ..SamplerConfig::default()
        });
        let n = 70_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[s.sample(&mut l.to_vec(), &[]) as usize] += 1;
        }
        for (count, want) in counts.iter().zip([1.0, 2.0, 4.0]) {
            let got = *count as f64 / n as f64;
            assert!((got - want / 7.0).abs() < 0.01, "{counts:?}");
        }
    }

    #[test]
    fn a_tiny_change_in_the_logits_seldom_changes_the_pick() {
        // Forty near-equal candidates whose order a change of 1e-4 reshuffles: the pick must not
        // depend on that order (a draw from the running total in sorted order changes most
        // of the time here).
        let base: Vec<f32> = (0..40).map(|i| 5.0 + (i % 4) as f32 * 1e-5).collect();
        let nudged: Vec<f32> = base
            .iter()
            .enumerate()
            .map(|(i, l)| l + ((i * 17) % 7) as f32 * 2e-5)
            .collect();
        let config = SamplerConfig {
            temperature: 0.8,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplerConfig::default()
        };
        let differ = (0..1000)
            .filter(|&seed| {
                let pick = |l: &[f32]| {
                    Sampler::new(SamplerConfig {
                        seed,
                        ..config.clone()
                    })
                    .sample(&mut l.to_vec(), &[])
                };
                pick(&base) != pick(&nudged)
            })
            .count();
        assert!(differ <= 5, "{differ} of 1000 seeds changed their pick");
    }

    #[test]
    fn filters_limit_the_choice() {
        let base = SamplerConfig {
            temperature: 5.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 1,
            ..SamplerConfig::default()
        };
        let l = logits();
        let mut order: Vec<u32> = (0..l.len() as u32).collect();
        order.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]));
        let mut s = Sampler::new(SamplerConfig {
            top_k: 3,
            ..base.clone()
        });
        for _ in 0..200 {
            assert!(order[..3].contains(&s.sample(&mut l.clone(), &[])));
        }
        // min-p 0.5 keeps logits within ln 2 of the best: 9.99, 9.98, ... down to 9.30.
        let mut s = Sampler::new(SamplerConfig {
            min_p: 0.5,
            ..base.clone()
        });
        for _ in 0..200 {
            let t = s.sample(&mut l.clone(), &[]);
            assert!(l[t as usize] >= 9.99 - core::f32::consts::LN_2);
        }
        // A tiny top-p keeps only the best.
        let mut s = Sampler::new(SamplerConfig {
            top_p: 1e-6,
            ..base
        });
        assert_eq!(s.sample(&mut l.clone(), &[]), order[0]);
    }

    #[test]
    fn repetition_penalty_demotes_recent_tokens() {
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 10.0,
            ..SamplerConfig::greedy()
        });
        let mut l = vec![1.0, 5.0, 4.0, -1.0];
        assert_eq!(s.sample(&mut l, &[1, 3]), 2);
        assert_eq!(l, vec![1.0, 0.5, 4.0, -10.0]);
    }

    #[test]
    fn bad_values_are_named() {
        assert!(
            SamplerConfig {
                temperature: -1.0,
                ..SamplerConfig::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplerConfig {
                top_p: 0.0,
                ..SamplerConfig::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplerConfig {
                min_p: 2.0,
                ..SamplerConfig::default()
            }
            .validate()
            .is_err()
        );
        assert!(SamplerConfig::default().validate().is_ok());
    }
}
