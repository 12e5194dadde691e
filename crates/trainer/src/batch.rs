//! From examples to tensors: the shuffled order of the data stream, and
//! padded batches with shifted, masked labels.
//!
//! Layout choice: **padding, not packing**. Each row holds one example,
//! right-padded to the longest row of its batch (at most `seq_len`). With
//! a causal mask, right padding cannot leak into real positions and
//! examples never attend to each other, which packing would need a
//! block-diagonal mask for. Padded positions carry [`IGNORE_INDEX`].

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::data::Example;

/// Label of positions that do not count in the loss (prompt, padding).
pub const IGNORE_INDEX: i64 = -100;

/// Where the trainer is in the infinite stream of shuffled epochs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataCursor {
    /// Epochs completed.
    pub epoch: u64,
    /// Examples of the current epoch already consumed.
    pub index: u64,
}

/// The order examples are drawn in: a fresh permutation per epoch, drawn
/// from ChaCha8 seeded with `seed` on stream `epoch`. The order depends on
/// nothing but (seed, epoch), so a [`DataCursor`] is all a resume needs.
#[derive(Clone, Debug)]
pub struct DataOrder {
    seed: u64,
    shuffle: bool,
    len: usize,
    epoch: Option<u64>,
    perm: Vec<usize>,
}

impl DataOrder {
    /// Order over `len` examples (`len > 0`); `shuffle = false` keeps file order.
    pub fn new(seed: u64, len: usize, shuffle: bool) -> Self {
        DataOrder {
            seed,
            shuffle,
            len,
            epoch: None,
            perm: Vec::new(),
        }
    }

    /// The permutation of epoch `epoch`.
    pub fn permutation(seed: u64, epoch: u64, len: usize) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(epoch);
        let mut p: Vec<usize> = (0..len).collect();
        p.shuffle(&mut rng);
        p
    }

    /// The next `count` example indices, advancing `cursor` (across epochs).
    pub fn take(&mut self, cursor: &mut DataCursor, count: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            if cursor.index as usize >= self.len {
                cursor.epoch += 1;
                cursor.index = 0;
            }
            if self.epoch != Some(cursor.epoch) {
                self.perm = if self.shuffle {
                    Self::permutation(self.seed, cursor.epoch, self.len)
                } else {
                    (0..self.len).collect()
                };
                self.epoch = Some(cursor.epoch);
            }
            out.push(self.perm[cursor.index as usize]);
            cursor.index += 1;
        }
        out
    }
}

/// One padded batch on a device.
#[derive(Debug)]
pub struct Batch {
    /// i64 [B, T]: tokens 0..n-1 of each example, padded.
    pub input_ids: Tensor,
    /// i64 [B, T]: `labels[b, t]` = token t+1 if it is a target, else [`IGNORE_INDEX`].
    pub labels: Tensor,
    /// Positions with a real label.
    pub target_tokens: usize,
    /// Non-padding input positions.
    pub tokens: usize,
}

/// Inputs and next-token labels of one example (unpadded, length n-1).
pub fn inputs_and_labels(ex: &Example) -> (Vec<i64>, Vec<i64>) {
    let n = ex.tokens.len();
    let inputs = ex.tokens[..n.saturating_sub(1)]
        .iter()
        .map(|&t| t as i64)
        .collect();
    let labels = (1..n)
        .map(|t| {
            if ex.is_target[t] {
                ex.tokens[t] as i64
            } else {
                IGNORE_INDEX
            }
        })
        .collect();
    (inputs, labels)
}

/// Right-pads `examples` (non-empty) into one batch on `device`.
pub fn make_batch(examples: &[&Example], pad_id: u32, device: Device) -> Batch {
    let rows: Vec<(Vec<i64>, Vec<i64>)> = examples.iter().map(|e| inputs_and_labels(e)).collect();
    let width = rows.iter().map(|(i, _)| i.len()).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut labels = Vec::with_capacity(rows.len() * width);
    let (mut tokens, mut targets) = (0, 0);
    for (i, l) in &rows {
        tokens += i.len();
        targets += l.iter().filter(|&&x| x != IGNORE_INDEX).count();
        ids.extend_from_slice(i);
        ids.resize(ids.len() + width - i.len(), pad_id as i64);
        labels.extend_from_slice(l);
        labels.resize(labels.len() + width - l.len(), IGNORE_INDEX);
    }
    let shape = [rows.len() as i64, width as i64];
    Batch {
        input_ids: Tensor::from_slice(&ids).reshape(shape).to_device(device),
        labels: Tensor::from_slice(&labels)
            .reshape(shape)
            .to_kind(Kind::Int64)
            .to_device(device),
        target_tokens: targets,
        tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(tokens: Vec<u32>, first_target: usize) -> Example {
        let n = tokens.len();
        Example {
            is_target: (0..n).map(|i| i >= first_target).collect(),
            tokens,
            prompt_ids: vec![],
            prompt: String::new(),
            response: String::new(),
            line: 1,
        }
    }

    #[test]
    fn labels_are_next_tokens_with_the_prompt_masked() {
        // prompt 10 11 12, targets 20 21 (21 standing for <|im_end|>)
        let e = ex(vec![10, 11, 12, 20, 21], 3);
        let (i, l) = inputs_and_labels(&e);
        assert_eq!(i, vec![10, 11, 12, 20]);
        assert_eq!(l, vec![-100, -100, 20, 21]);
    }

    #[test]
    fn batch_pads_on_the_right_with_ignored_labels() {
        let a = ex(vec![1, 2, 3, 4, 5], 3);
        let b = ex(vec![7, 8, 9], 2);
        let batch = make_batch(&[&a, &b], 0, Device::Cpu);
        assert_eq!(batch.input_ids.size(), vec![2, 4]);
        let ids = Vec::<i64>::try_from(batch.input_ids.reshape([-1])).unwrap();
        let labels = Vec::<i64>::try_from(batch.labels.reshape([-1])).unwrap();
        assert_eq!(ids, vec![1, 2, 3, 4, 7, 8, 0, 0]);
        assert_eq!(labels, vec![-100, -100, 4, 5, -100, 9, -100, -100]);
        assert_eq!(batch.target_tokens, 3);
        assert_eq!(batch.tokens, 6);
    }

    #[test]
    fn each_epoch_is_a_permutation_and_epochs_differ() {
        let mut order = DataOrder::new(42, 50, true);
        let mut cur = DataCursor::default();
        let e0 = order.take(&mut cur, 50);
        let e1 = order.take(&mut cur, 50);
        assert_eq!(
            cur,
            DataCursor {
                epoch: 1,
                index: 50
            }
        );
        for e in [&e0, &e1] {
            let mut s = e.clone();
            s.sort();
            assert_eq!(s, (0..50).collect::<Vec<_>>());
        }
        assert_ne!(e0, e1);
        assert_ne!(e0, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn resuming_from_a_cursor_continues_the_same_stream() {
        let mut straight = DataOrder::new(7, 13, true);
        let mut c = DataCursor::default();
        let all = straight.take(&mut c, 40);
        let mut first = DataOrder::new(7, 13, true);
        let mut c1 = DataCursor::default();
        let head = first.take(&mut c1, 17);
        let mut resumed = DataOrder::new(7, 13, true); // fresh, as after a restart
        let tail = resumed.take(&mut c1, 23);
        assert_eq!([head, tail].concat(), all);
    }

    #[test]
    fn unshuffled_order_is_file_order() {
        let mut order = DataOrder::new(1, 3, false);
        let mut c = DataCursor::default();
        assert_eq!(order.take(&mut c, 7), vec![0, 1, 2, 0, 1, 2, 0]);
    }
}
