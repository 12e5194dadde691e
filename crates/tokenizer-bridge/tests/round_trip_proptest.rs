//! decode(encode(x)) == x for random Unicode (NFC-normalized, as the tokenizer sees it),
//! and the stream decoder agrees with the one-shot decoder. proptest seeds from the OS
//! each run and prints a failing input's seed.

mod common;

use common::tok;
use proptest::prelude::*;

/// Characters that stress byte-level BPE: multi-byte scripts, emoji parts (ZWJ,
/// variation selector, skin tone, regional indicators), combining marks, whitespace.
const TRICKY: &[char] = &[
    'é', 'ß', 'ж', '中', '文', 'の', 'ア', 'ب', 'ह', '्', '\u{0301}', '\u{0308}', '👋', '👨',
    '\u{200D}', '\u{FE0F}', '🏽', '🇯', '🇵', '😀', '𠀀', ' ', '\t', '\n', '\r', '0', '7', '\'', '<',
    '|', '>', 'a', 'Z', '\u{00A0}', '\u{3000}',
];

fn text() -> impl Strategy<Value = String> {
    let ch = prop_oneof![3 => any::<char>(), 7 => proptest::sample::select(TRICKY)];
    prop_oneof![
        proptest::collection::vec(ch, 0..48).prop_map(String::from_iter),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn decode_of_encode_returns_the_normalized_text(x in text()) {
        let t = tok();
        let ids = t.encode(&x, true).unwrap();
        let nfc = t.normalize(&x).unwrap();
        prop_assert_eq!(t.decode(&ids, false).unwrap(), nfc.clone());
        // NFC is idempotent, so text already in NFC comes back unchanged.
        prop_assert_eq!(t.normalize(&nfc).unwrap(), nfc.clone());
        if nfc == x {
            prop_assert_eq!(t.decode(&ids, false).unwrap(), x);
        }
    }

    #[test]
    fn stream_pieces_concatenate_to_the_full_decode(x in text()) {
        let t = tok();
        let ids = t.encode(&x, false).unwrap();
        let mut dec = t.stream_decoder_with(false);
        let mut out = String::new();
        for &id in &ids {
            if let Some(piece) = dec.push(id).unwrap() {
                // Input has no U+FFFD of its own, so none may appear mid-stream.
                if !x.contains('\u{FFFD}') {
                    prop_assert!(!piece.contains('\u{FFFD}'), "piece {:?} of {:?}", piece, x);
                }
                out.push_str(&piece);
            }
        }
        out.extend(dec.finish().unwrap());
        prop_assert_eq!(out, t.decode(&ids, false).unwrap());
    }
}
