//! Unsigned LEB128 varints, the only integer encoding of `.dat` headers:
//! 7 bits a byte, low group first, high bit set on every byte but the last.

/// Longest encoding of a `u64`: ceil(64 / 7) bytes.
pub(crate) const MAX_VARINT_LEN: usize = 10;

/// Why a varint could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VarintError {
    /// The input ended before the last byte (one without the high bit).
    Truncated,
    /// More than 64 bits of payload.
    Overflow,
}

/// Decodes a varint at the start of `bytes`; returns the value and its length.
///
/// Non-minimal encodings (`0x80 0x00` for 0) are accepted, as any LEB128
/// decoder does; bits beyond 64 are an overflow, never silently dropped.
pub(crate) fn decode(bytes: &[u8]) -> Result<(u64, usize), VarintError> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(MAX_VARINT_LEN) {
        let group = u64::from(byte & 0x7f);
        // The tenth byte carries bit 63 only: anything above it is lost bits.
        if i == MAX_VARINT_LEN - 1 && group > 1 {
            return Err(VarintError::Overflow);
        }
        value |= group << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if bytes.len() >= MAX_VARINT_LEN {
        Err(VarintError::Overflow)
    } else {
        Err(VarintError::Truncated)
    }
}

/// Appends the minimal encoding of `value` (what the original tools wrote).
pub(crate) fn encode(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings_match_leb128() {
        let cases: [(u64, &[u8]); 6] = [
            (0, &[0x00]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (
                u64::MAX,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ];
        for (value, bytes) in cases {
            let mut out = Vec::new();
            encode(value, &mut out);
            assert_eq!(out, bytes, "encode {value}");
            assert_eq!(decode(bytes), Ok((value, bytes.len())), "decode {value}");
        }
    }

    #[test]
    fn non_minimal_encoding_is_accepted() {
        assert_eq!(decode(&[0x80, 0x80, 0x00]), Ok((0, 3)));
    }

    #[test]
    fn missing_last_byte_is_truncated() {
        assert_eq!(decode(&[]), Err(VarintError::Truncated));
        assert_eq!(decode(&[0x80, 0x80]), Err(VarintError::Truncated));
    }

    #[test]
    fn more_than_64_bits_is_overflow() {
        // 2^64 needs a tenth byte of 2.
        let mut bytes = vec![0x80; 9];
        bytes.push(0x02);
        assert_eq!(decode(&bytes), Err(VarintError::Overflow));
        // Eleven bytes, even of zeros, exceed any u64 encoding.
        let mut long = vec![0x80; 10];
        long.push(0x00);
        assert_eq!(decode(&long), Err(VarintError::Overflow));
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(value: u64, tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut out = Vec::new();
            encode(value, &mut out);
            let len = out.len();
            out.extend(tail);
            prop_assert_eq!(decode(&out), Ok((value, len)));
        }
    }
}
