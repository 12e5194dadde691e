//! The stream decoder on real Qwen3 ids: emoji and CJK split across byte-level tokens
//! never produce U+FFFD, and the pieces add up to the one-shot decode.

mod common;

use common::{text_fixture, tok};

/// Decodes `ids` one at a time; returns the pieces (None = held back) and the flushed tail.
fn stream(ids: &[u32], skip_special: bool) -> (Vec<Option<String>>, Option<String>) {
    let mut dec = tok().stream_decoder_with(skip_special);
    let pieces = ids.iter().map(|&id| dec.push(id).unwrap()).collect();
    (pieces, dec.finish().unwrap())
}

#[test]
fn hello_wave_holds_the_first_half_of_the_emoji() {
    // 61804 and 233 are the two byte-level halves of 👋 (docs/Formats.md, "Token ids").
    assert!(tok().decode(&[61804], false).unwrap().contains('\u{FFFD}'));
    let (pieces, tail) = stream(&[9707, 0, 61804, 233], false);
    assert_eq!(
        pieces,
        [
            Some("Hello".into()),
            Some("!".into()),
            None,
            Some(" 👋".into())
        ]
    );
    assert_eq!(tail, None);
}

#[test]
fn split_characters_in_the_text_set_never_print_replacement_chars() {
    let mut held_back = 0;
    let mut split_tokens = 0;
    for case in text_fixture().cases {
        for skip_special in [false, true] {
            let (pieces, tail) = stream(&case.ids, skip_special);
            let mut joined = String::new();
            for piece in pieces.iter().flatten() {
                assert!(
                    !piece.contains('\u{FFFD}'),
                    "{}: piece {piece:?}",
                    case.name
                );
                joined.push_str(piece);
            }
            held_back += pieces.iter().filter(|p| p.is_none()).count();
            assert_eq!(
                tail, None,
                "{}: nothing may be left once the text is complete",
                case.name
            );
            let full = if skip_special {
                &case.decoded_skip_special
            } else {
                &case.decoded
            };
            assert_eq!(&joined, full, "{}", case.name);
        }
        split_tokens += case
            .ids
            .iter()
            .filter(|&&id| tok().decode(&[id], false).unwrap().contains('\u{FFFD}'))
            .count();
    }
    // The set must really contain characters split across tokens, or this test proves nothing.
    assert!(
        split_tokens >= 20,
        "only {split_tokens} tokens hold partial characters"
    );
    assert!(
        held_back >= 20,
        "the decoder held back only {held_back} times"
    );
}

#[test]
fn generated_reply_prints_without_stop_token_when_skipping_specials() {
    let ids = tok()
        .encode("<think>\n好</think>\n\n答案 🇯🇵<|im_end|>", false)
        .unwrap();
    assert_eq!(ids.last(), Some(&tok().im_end_id()));
    let (pieces, tail) = stream(&ids, true);
    let text: String = pieces.into_iter().flatten().chain(tail).collect();
    assert_eq!(text, "<think>\n好</think>\n\n答案 🇯🇵");
}
