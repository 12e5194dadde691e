//! Choosing the next token from the logits of the last position.
//!
//! The pipeline follows Hugging Face `generate` (same processors, same order),
//! all in f32 on the logits' own device (CPU or CUDA):
//! 1. repetition penalty over the history: a positive logit is divided by the
//!    penalty, a negative one multiplied (each distinct token once);
//! 2. greedy (`temperature == 0`): arg max, ties to the lowest id; else
//! 3. temperature, 4. top-k (ties with the k-th logit are kept), 5. top-p
//!    (the token whose probability crosses `top_p` is KEPT, with any token tied
//!    with it: the original dropped it and sampled from an all-zero
//!    distribution when the top-1 probability exceeded `top_p`), 6. min-p
//!    (keep `p >= min_p * p_max`), each on the logits the previous one left;
//! 7. one draw by inverse CDF (token-id order, no sort) from a ChaCha8 stream seeded by
//!    [`SamplingParams::seed`]: torch's global generator is never touched, so the
//!    same seed gives the same tokens whatever else the process does.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// How the next token is chosen. `temperature == 0` means greedy.
///
/// "Off" values: `top_k` `None` or `Some(0)`, `top_p` `None` or `1.0`,
/// `min_p` `None` or `0.0`, `repetition_penalty` `1.0`.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 selects greedy decoding.
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (and any tied with the k-th).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose mass reaches `top_p`, in (0, 1].
    pub top_p: Option<f64>,
    /// Drop tokens less likely than `min_p` times the most likely one, in [0, 1].
    pub min_p: Option<f64>,
    /// Hugging Face repetition penalty (> 0; 1 = off).
    pub repetition_penalty: f64,
    /// Seed of the sampler's own random stream.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingParams {
    /// Greedy decoding, no penalty.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            min_p: None,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }

    /// True when the arg max is taken instead of a draw.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks every field; the error names the field, its value and the accepted range.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &'static str, value: f64, expected: &'static str| {
            Err(Error::InvalidArgument {
                name,
                reason: format!("got {value}, expected {expected}"),
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                self.temperature,
                "a finite number >= 0 (0 = greedy)",
            );
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad("top_p", p, "a number in (0, 1]");
            }
        }
        if let Some(p) = self.min_p {
            if !(0.0..=1.0).contains(&p) {
                return bad("min_p", p, "a number in [0, 1]");
            }
        }
        let r = self.repetition_penalty;
        if !(r.is_finite() && r > 0.0) {
            return bad("repetition_penalty", r, "a finite number > 0 (1 = off)");
        }
        Ok(())
    }
}

/// Draws tokens according to [`SamplingParams`]; owns the seeded random stream.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler whose stream starts at `params.seed`. Parameters are checked
    /// by every call of [`Sampler::sample`] (see [`SamplingParams::validate`]).
    pub fn new(params: SamplingParams) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token. `logits`: float `[vocab]` on any device;
    /// `history`: the tokens the repetition penalty looks at (prompt and
    /// generated so far). Advances the random stream by one draw unless greedy.
    pub fn sample(&mut self, logits: &Tensor, history: &[u32]) -> Result<u32> {
        let x = self.processed_logits(logits, history)?;
        if self.params.is_greedy() {
            return token_id(&x.f_argmax(0, false)?);
        }
        let u: f64 = self.rng.gen();
        draw(&x, u)
    }

    /// The distribution [`Sampler::sample`] draws from: f32 `[vocab]` on the
    /// logits' device, 0 for every removed token (one-hot when greedy).
    pub fn probabilities(&self, logits: &Tensor, history: &[u32]) -> Result<Tensor> {
        let x = self.processed_logits(logits, history)?;
        if self.params.is_greedy() {
            let best = x.f_argmax(0, false)?.f_view([1])?;
            let ones = Tensor::f_ones([1], (Kind::Float, x.device()))?;
            return Ok(x.f_zeros_like()?.f_scatter(0, &best, &ones)?);
        }
        Ok(x.f_softmax(0, Kind::Float)?)
    }

    /// Steps 1-6 of the module doc: f32 logits with `-inf` at removed tokens.
    fn processed_logits(&self, logits: &Tensor, history: &[u32]) -> Result<Tensor> {
        let p = &self.params;
        p.validate()?;
        let x = checked_f32(logits)?;
        let vocab = x.size()[0] as usize;
        let x = repetition_penalty(&x, history, p.repetition_penalty, vocab)?;
        if p.is_greedy() {
            return Ok(x);
        }
        // Subtracting the max first keeps a tiny temperature from overflowing to
        // inf (inf - inf = NaN in softmax); no filter below depends on the shift.
        let max = x.f_max()?;
        let mut x = x.f_sub(&max)?.f_div_scalar(p.temperature)?;
        if let Some(k) = p.top_k.filter(|&k| k > 0 && k < vocab) {
            x = top_k(&x, k)?;
        }
        if let Some(top) = p.top_p.filter(|&t| t < 1.0) {
            x = top_p(&x, top)?;
        }
        if let Some(min) = p.min_p.filter(|&m| m > 0.0) {
            x = min_p(&x, min)?;
        }
        Ok(x)
    }
}

/// Validates shape, kind and values of the logits; returns an f32 copy.
fn checked_f32(logits: &Tensor) -> Result<Tensor> {
    let shape = logits.size();
    if shape.len() != 1 || shape[0] == 0 {
        return Err(Error::BadInput {
            name: "logits",
            reason: format!("expected shape [vocab] with vocab > 0, got {shape:?}"),
        });
    }
    if !logits.is_floating_point() {
        return Err(Error::BadInput {
            name: "logits",
            reason: format!("expected a float tensor, got {:?}", logits.kind()),
        });
    }
    let x = logits.f_to_kind(Kind::Float)?;
    // torch's max propagates NaN, so one scalar read catches NaN, +inf and all -inf.
    let max = x.f_max()?.f_double_value(&[])?;
    if !max.is_finite() {
        return Err(Error::BadInput {
            name: "logits",
            reason: format!("maximum logit is {max} (NaN, +inf, or every logit -inf)"),
        });
    }
    Ok(x)
}

/// HF `RepetitionPenaltyLogitsProcessor`: each distinct id of `history` once.
fn repetition_penalty(x: &Tensor, history: &[u32], penalty: f64, vocab: usize) -> Result<Tensor> {
    if penalty == 1.0 || history.is_empty() {
        return Ok(x.shallow_clone());
    }
    if let Some((index, &id)) = history
        .iter()
        .enumerate()
        .find(|(_, &id)| id as usize >= vocab)
    {
        return Err(out_of_vocab("sampling history", index, id, vocab));
    }
    let mut ids: Vec<i64> = history.iter().map(|&id| i64::from(id)).collect();
    ids.sort_unstable();
    ids.dedup();
    let idx = Tensor::f_from_slice(&ids)?.f_to_device(x.device())?;
    let picked = x.f_index_select(0, &idx)?;
    let penalized = picked
        .f_mul_scalar(penalty)?
        .f_where_self(&picked.f_lt(0.0)?, &picked.f_div_scalar(penalty)?)?;
    Ok(x.f_index_copy(0, &idx, &penalized)?)
}

/// HF `TopKLogitsWarper`: removes logits below the k-th largest.
fn top_k(x: &Tensor, k: usize) -> Result<Tensor> {
    let (values, _) = x.f_topk(k as i64, 0, true, true)?;
    let kth = values.f_get(k as i64 - 1)?;
    Ok(x.f_masked_fill(&x.f_lt_tensor(&kth)?, f64::NEG_INFINITY)?)
}

/// Top-p (nucleus): keeps the most likely tokens until their mass reaches
/// `top_p`, the token that crosses the threshold included (so the most likely
/// token always stays). Written as a probability floor, `p >= p_cross`, which
/// keeps every token tied with the crossing one and needs no full sort: the
/// crossing token is found in a `topk` prefix grown until it holds it (a full
/// sort of a 152k vocabulary costs ~100 ms on CPU, `topk(256)` a few ms).
fn top_p(x: &Tensor, top_p: f64) -> Result<Tensor> {
    let probs = x.f_softmax(0, Kind::Float)?;
    let vocab = probs.size()[0];
    let mut k = vocab.min(TOP_P_FIRST_K);
    let floor = loop {
        let (values, _) = probs.f_topk(k, 0, true, true)?;
        // Index of the first prefix whose mass reaches top_p.
        let crossing = values
            .f_cumsum(0, Kind::Float)?
            .f_lt(top_p)?
            .f_sum(Kind::Int64)?
            .f_int64_value(&[])?;
        if crossing < k {
            break values.f_get(crossing)?;
        }
        if k == vocab {
            // Rounding kept the total just below top_p: everything stays.
            break values.f_get(vocab - 1)?;
        }
        k = (k * 8).min(vocab);
    };
    Ok(x.f_masked_fill(&probs.f_lt_tensor(&floor)?, f64::NEG_INFINITY)?)
}

/// First `topk` prefix searched for the top-p crossing token.
const TOP_P_FIRST_K: i64 = 256;

/// HF `MinPLogitsWarper`: removes tokens with `p < min_p * p_max`.
fn min_p(x: &Tensor, min_p: f64) -> Result<Tensor> {
    let probs = x.f_softmax(0, Kind::Float)?;
    let floor = probs.f_max()?.f_mul_scalar(min_p)?;
    Ok(x.f_masked_fill(&probs.f_lt_tensor(&floor)?, f64::NEG_INFINITY)?)
}

/// Inverse-CDF draw with `u` in [0, 1) over the softmax of `x`, in token-id
/// order: the first token whose cumulative probability exceeds `u * total`.
/// A removed token (p = 0) adds nothing to the CDF, so it can never be that
/// token, except when rounding puts the target at the very top; the last
/// kept token is then the answer.
fn draw(x: &Tensor, u: f64) -> Result<u32> {
    let probs = x.f_softmax(0, Kind::Float)?;
    let cdf = probs.f_cumsum(0, Kind::Float)?;
    let target = cdf.f_get(-1)?.f_mul_scalar(u)?;
    let below = cdf.f_le_tensor(&target)?.f_sum(Kind::Int64)?;
    let kept = probs.f_gt(0.0)?.f_to_kind(Kind::Uint8)?;
    let last_kept = kept
        .f_flip([0])?
        .f_argmax(0, false)?
        .f_neg()?
        .f_add_scalar(probs.size()[0] - 1)?;
    token_id(&below.f_minimum(&last_kept)?)
}

/// The error for a token id outside `0..vocab` at position `index` of `name`.
pub(crate) fn out_of_vocab(name: &'static str, index: usize, id: u32, vocab: usize) -> Error {
    Error::BadInput {
        name,
        reason: format!("id {id} at index {index} is outside the vocabulary (size {vocab})"),
    }
}

fn token_id(t: &Tensor) -> Result<u32> {
    let id = t.f_view([-1])?.f_int64_value(&[0])?;
    u32::try_from(id).map_err(|_| Error::BadInput {
        name: "logits",
        reason: format!("token index {id} does not fit u32"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn greedy_takes_arg_max_and_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&logits(&[0.1, 2.0, -1.0, 2.0]), &[]).unwrap(), 1);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let x = logits(&[3.0, -1.0, 2.0, 0.5]);
        let out = repetition_penalty(&x, &[0, 1, 1, 0], p.repetition_penalty, 4).unwrap();
        let got: Vec<f32> = Vec::try_from(&out).unwrap();
        assert_eq!(got, vec![1.5, -2.0, 2.0, 0.5]);
        // Token 0 (3.0 -> 1.5) loses to token 2 under greedy once penalized.
        assert_eq!(Sampler::new(p).sample(&x, &[0]).unwrap(), 2);
    }

    #[test]
    fn history_id_outside_vocab_is_an_error() {
        let p = SamplingParams {
            repetition_penalty: 1.3,
            ..SamplingParams::greedy()
        };
        let err = Sampler::new(p)
            .sample(&logits(&[1.0, 2.0]), &[0, 7])
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::BadInput {
                    name: "sampling history",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("id 7 at index 1"), "{err}");
    }

    #[test]
    fn nan_logits_are_rejected_not_sampled() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            ..SamplingParams::greedy()
        });
        let err = s.sample(&logits(&[1.0, f32::NAN, 0.0]), &[]).unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
    }

    #[test]
    fn wrong_rank_and_integer_logits_are_rejected() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert!(s
            .sample(&Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu)), &[])
            .is_err());
        assert!(s.sample(&Tensor::from_slice(&[1i64, 2]), &[]).is_err());
    }

    #[test]
    fn invalid_params_name_the_field() {
        for (p, field) in [
            (
                SamplingParams {
                    temperature: -0.5,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: Some(0.0),
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    min_p: Some(1.5),
                    ..Default::default()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..Default::default()
                },
                "repetition_penalty",
            ),
        ] {
            let err = p.validate().unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn top_p_keeps_every_token_tied_with_the_crossing_one() {
        // Four equal tokens: the crossing token (the second) is tied with all of them.
        let p = SamplingParams {
            temperature: 1.0,
            top_p: Some(0.3),
            ..SamplingParams::greedy()
        };
        let probs = Sampler::new(p)
            .probabilities(&logits(&[1.0, 1.0, 1.0, 1.0, -9.0]), &[])
            .unwrap();
        let kept = Vec::<f32>::try_from(probs.gt(0.0).to_kind(Kind::Float)).unwrap();
        assert_eq!(kept, vec![1.0, 1.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn top_p_search_grows_past_the_first_topk_prefix() {
        // 2000 distinct, nearly equal logits: the nucleus of 0.6 holds ~1200
        // tokens, far beyond the first 256 searched.
        let x: Vec<f32> = (0..2000).map(|i| -(i as f32) * 1e-4).collect();
        let probs: Vec<f64> = {
            let e: Vec<f64> = x.iter().map(|&v| (v as f64).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.iter().map(|v| v / sum).collect()
        };
        let mut cum = 0.0;
        let want = 1 + probs
            .iter()
            .take_while(|&&q| {
                cum += q;
                cum < 0.6
            })
            .count();
        let p = SamplingParams {
            temperature: 1.0,
            top_p: Some(0.6),
            ..SamplingParams::greedy()
        };
        let got = Sampler::new(p).probabilities(&logits(&x), &[]).unwrap();
        let got = got.gt(0.0).sum(Kind::Int64).int64_value(&[]) as usize;
        assert!(want > 1000, "{want}");
        assert_eq!(got, want);
    }

    #[test]
    fn draw_never_lands_on_a_removed_token_at_the_top_of_the_cdf() {
        // u just below 1 targets the very top of the CDF; the tail tokens are removed.
        let x = logits(&[2.0, 1.0, f32::NEG_INFINITY, f32::NEG_INFINITY]);
        for u in [0.0, 0.5, 0.999_999_999, 1.0 - f64::EPSILON] {
            let id = draw(&x, u).unwrap();
            assert!(id < 2, "u = {u}: drew removed token {id}");
        }
        assert_eq!(draw(&x, 0.0).unwrap(), 0);
        assert_eq!(draw(&x, 1.0 - f64::EPSILON).unwrap(), 1);
    }

    #[test]
    fn tiny_temperature_does_not_overflow_to_nan() {
        let p = SamplingParams {
            temperature: 1e-30,
            seed: 3,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(p);
        for _ in 0..5 {
            assert_eq!(s.sample(&logits(&[1e30, 0.0, 3e30, -2.0]), &[]).unwrap(), 2);
        }
    }
}
