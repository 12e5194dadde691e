//! Every token id that reaches the model during training is checked against
//! its vocabulary when the trainer is built: a data file (or a tokenizer that
//! does not match the model) yielding an id >= `vocab_size` is an error naming
//! the file, the line and the id, never a libtorch abort mid-run.

mod common;

use tokenizer_bridge::Qwen3Tokenizer;
use trainer::{load_data, BadLinePolicy, DataOptions, Error, TrainConfig, Trainer};

/// The error of a trainer that must not be built (`Trainer` is not `Debug`).
fn refused(built: Result<Trainer, Error>) -> Error {
    match built {
        Ok(_) => panic!("the trainer was built; expected a refusal"),
        Err(e) => e,
    }
}

fn config() -> TrainConfig {
    TrainConfig {
        steps: Some(1),
        batch_size: 2,
        progress: false,
        ..Default::default()
    }
}

#[test]
fn an_id_outside_the_vocabulary_is_named_with_its_file_and_line() {
    let seed = test_support::seed();
    let vocab = 64;
    let cfg = common::tiny_config(vocab, true);
    let mut data = common::random_dataset(9, vocab as u32, seed);
    let bad = 1 + (seed % 8) as usize; // anywhere but the first example
    let pos = data.examples[bad].tokens.len() / 2;
    data.examples[bad].tokens[pos] = vocab as u32;
    let line = data.examples[bad].line;
    let err = refused(Trainer::new(
        common::tiny_model(&cfg, seed),
        config(),
        data,
        0,
    ));
    match &err {
        Error::TokenOutOfVocab {
            line: l,
            id,
            vocab: v,
            ..
        } => assert_eq!((*l, *id, *v), (line, vocab as u32, vocab)),
        other => panic!("expected TokenOutOfVocab, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("random:{line}: token id {vocab} ")),
        "{msg}"
    );
}

#[test]
fn a_tokenizer_larger_than_the_model_is_caught_on_the_first_line() {
    // The real Qwen3 tokenizer's chat markers are ids above 151000: a model
    // with a 256-word vocabulary cannot take them.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.tsv");
    std::fs::write(&path, "# header\n\nHello?\tHi.\n").unwrap();
    let tok = Qwen3Tokenizer::bundled().unwrap();
    let opts = DataOptions {
        seq_len: 64,
        bad_lines: BadLinePolicy::Fail,
        system_prompt: None,
    };
    let data = load_data(&path, &tok, &opts).unwrap();
    let cfg = common::tiny_config(256, true);
    let err = refused(Trainer::new(common::tiny_model(&cfg, 1), config(), data, 0));
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{}:3: token id ", path.display())) && msg.contains("0..256"),
        "{msg}"
    );
    let Error::TokenOutOfVocab { id, .. } = err else {
        panic!("expected TokenOutOfVocab, got {err}")
    };
    assert!(id >= 256);
}

#[test]
fn a_pad_id_outside_the_vocabulary_is_refused() {
    let seed = test_support::seed();
    let cfg = common::tiny_config(64, true);
    let data = common::random_dataset(4, 64, seed);
    let err = refused(Trainer::new(
        common::tiny_model(&cfg, seed),
        config(),
        data,
        64,
    ));
    assert!(
        err.to_string().contains("pad id") && err.to_string().contains("64"),
        "{err}"
    );
}
