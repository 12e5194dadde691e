//! The non-tensor part of a training run that a resume needs.

use serde::{Deserialize, Serialize};

/// Where a training run stands: everything except the tensors.
///
/// Saved in the checkpoint's metadata file; [`CheckpointManager::load`]
/// returns it exactly as saved.
///
/// [`CheckpointManager::load`]: crate::CheckpointManager::load
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// Optimizer steps taken so far; also names the checkpoint directory.
    pub step: u64,
    /// Completed epochs.
    pub epoch: u64,
    /// Position of the next example in the data order.
    pub data_cursor: u64,
    /// Opaque random-generator state (e.g. the bytes of torch's generator
    /// state). Stored as hex so the metadata stays small and readable.
    #[serde(with = "hex_bytes")]
    pub rng_state: Vec<u8>,
    /// The model's `config.json`, verbatim.
    pub config_json: String,
    /// The command-line arguments of the run, as the trainer parsed them.
    pub run_args: serde_json::Value,
    /// Anything else the trainer wants back on resume (scheduler, loss EMA, ...).
    pub extra: serde_json::Value,
}

/// `Vec<u8>` as a lowercase hex string: a few KiB of generator state would be
/// four times larger as a JSON array of numbers.
mod hex_bytes {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::digest::to_hex(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        crate::digest::from_hex(&text).ok_or_else(|| {
            D::Error::custom(format!(
                "rng_state is not an even-length hex string: {text:.40}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_round_trip_every_field_through_json() {
        let state = TrainingState {
            step: 123,
            epoch: 4,
            data_cursor: 99_999,
            rng_state: (0..=255u8).rev().collect(),
            config_json: r#"{"hidden_size": 64}"#.to_string(),
            run_args: serde_json::json!({"lr": 1e-4, "batch": 8}),
            extra: serde_json::json!({"loss_ema": 2.5}),
        };
        let text = serde_json::to_string(&state).unwrap();
        let back: TrainingState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, state);
    }

    #[test]
    fn should_reject_rng_state_that_is_not_hex() {
        let text = r#"{"step":1,"epoch":0,"data_cursor":0,"rng_state":"abc","config_json":"",
                       "run_args":null,"extra":null}"#;
        let err = serde_json::from_str::<TrainingState>(text).unwrap_err();
        assert!(err.to_string().contains("rng_state"), "{err}");
    }
}
