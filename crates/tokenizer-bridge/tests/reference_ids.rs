//! Token ids and decoded text equal HF `tokenizers` (Python) on the same tokenizer.json,
//! for a varied text set (fixtures from scripts/gen_tokenizer_fixtures.py).

mod common;

use common::{text_fixture, tok};
use sha2::{Digest, Sha256};

#[test]
fn hello_wave_gives_the_ids_recorded_from_the_real_tokenizer() {
    // The original's reference ids (docs/Formats.md, "Token ids"), independent of the
    // fixture file.
    assert_eq!(
        tok().encode("Hello! 👋", true).unwrap(),
        [9707, 0, 61804, 233]
    );
    assert_eq!(
        tok().decode(&[9707, 0, 61804, 233], false).unwrap(),
        "Hello! 👋"
    );
}

#[test]
fn special_ids_stop_set_and_vocab_size_are_qwen3s() {
    let t = tok();
    assert_eq!(
        (t.im_start_id(), t.im_end_id(), t.eos_id()),
        (151644, 151645, 151643)
    );
    assert_eq!(t.token_id("<|im_end|>"), Some(151645));
    // <|im_end|>, <|endoftext|>; config eos (<|im_end|>) and generation_config
    // [151645, 151643] add nothing new.
    assert_eq!(t.stop_ids(), [151645, 151643]);
    assert!(t.is_stop_id(151643) && !t.is_stop_id(151644));
    assert_eq!(t.vocab_size(), 151669);
}

#[test]
fn fixture_was_generated_from_the_bundled_tokenizer() {
    let fixture = text_fixture();
    let bundled = tokenizer_bridge::bundled_tokenizer_json().unwrap();
    let digest: String = Sha256::digest(&bundled)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        digest, fixture.source.tokenizer_json_sha256,
        "assets/qwen3/tokenizer.json.gz changed: rerun scripts/gen_tokenizer_fixtures.py"
    );
}

#[test]
fn encode_matches_python_tokenizers_for_every_text() {
    let fixture = text_fixture();
    assert!(
        fixture.cases.len() >= 25,
        "fixture has only {} texts",
        fixture.cases.len()
    );
    let mut failures = Vec::new();
    for case in &fixture.cases {
        for add_special in [true, false] {
            let got = tok().encode(&case.text, add_special).unwrap();
            if got != case.ids {
                let at = got
                    .iter()
                    .zip(&case.ids)
                    .take_while(|(a, b)| a == b)
                    .count();
                failures.push(format!(
                    "{} (add_special_tokens={add_special}): first difference at index {at}: got {:?}, want {:?}",
                    case.name,
                    got.get(at..(at + 4).min(got.len())),
                    case.ids.get(at..(at + 4).min(case.ids.len())),
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches vs tokenizers {}:\n{}",
        failures.len(),
        fixture.source.tokenizers_version,
        failures.join("\n")
    );
}

#[test]
fn decode_matches_python_tokenizers_with_and_without_special_tokens() {
    for case in text_fixture().cases {
        assert_eq!(
            tok().decode(&case.ids, false).unwrap(),
            case.decoded,
            "{}",
            case.name
        );
        assert_eq!(
            tok().decode(&case.ids, true).unwrap(),
            case.decoded_skip_special,
            "{}",
            case.name
        );
    }
}

#[test]
fn decode_of_encode_is_identity_on_the_text_set() {
    let mut normalized_cases = 0;
    for case in text_fixture().cases {
        let back = tok()
            .decode(&tok().encode(&case.text, true).unwrap(), false)
            .unwrap();
        let nfc = tok().normalize(&case.text).unwrap();
        assert_eq!(back, nfc, "{}", case.name);
        if nfc == case.text {
            assert_eq!(back, case.text, "{}", case.name);
        } else {
            // Only the deliberately decomposed text changes under NFC.
            assert_eq!(case.name, "nfd_input_is_normalized");
            normalized_cases += 1;
        }
    }
    assert_eq!(
        normalized_cases, 1,
        "the NFD case must exercise normalization"
    );
}

#[test]
fn special_tokens_written_in_text_become_single_ids() {
    let ids = tok()
        .encode("a<|im_start|>b<|im_end|><think>", false)
        .unwrap();
    assert_eq!(
        ids.iter()
            .filter(|&&id| id == 151644 || id == 151645 || id == 151667)
            .count(),
        3,
        "{ids:?}"
    );
    // A near miss stays ordinary text.
    assert!(!tok().encode("<|im_start", false).unwrap().contains(&151644));
}

#[test]
fn ids_outside_the_vocabulary_are_rejected_with_their_position() {
    let err = tok().decode(&[9707, 151_700], false).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("151700") && msg.contains("position 1") && msg.contains("151669"),
        "{msg}"
    );
}
