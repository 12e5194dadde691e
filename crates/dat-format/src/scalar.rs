//! Rust scalar types that `.dat` payloads can be viewed as (typed slices).

use std::borrow::Cow;

use crate::elem::ElemType;

// Payloads are little-endian; a typed view on a big-endian host would need
// byte swapping that nothing here does.
#[cfg(target_endian = "big")]
compile_error!(
    "dat-format reads little-endian payloads as native scalars; big-endian hosts are not supported"
);

/// A Rust type whose values a payload of some element types can be read as.
pub trait DatScalar: bytemuck::Pod {
    /// Whether a payload of `elem` holds values of this type.
    fn accepts(elem: ElemType) -> bool;
}

macro_rules! dat_scalar {
    ($t:ty, $($elem:pat_param)|+) => {
        impl DatScalar for $t {
            fn accepts(elem: ElemType) -> bool {
                matches!(elem, $($elem)|+)
            }
        }
    };
}

// Byte-sized types without a Rust scalar of their own (bool bytes, packed
// FP4 pairs, FP8 scales) are read as their raw `u8` codes.
dat_scalar!(
    u8,
    ElemType::U8 | ElemType::Bool | ElemType::F4E2M1x2 | ElemType::F8E4M3
);
dat_scalar!(i8, ElemType::I8);
dat_scalar!(i16, ElemType::I16);
dat_scalar!(i32, ElemType::I32);
dat_scalar!(i64, ElemType::I64);
dat_scalar!(half::f16, ElemType::F16);
dat_scalar!(half::bf16, ElemType::BF16);
dat_scalar!(f32, ElemType::F32);
dat_scalar!(f64, ElemType::F64);

/// Views `bytes` as `[T]`: borrowed when the payload happens to be aligned
/// for `T`, copied otherwise (`.dat` payloads have no alignment guarantee).
pub(crate) fn cast_payload<T: DatScalar>(bytes: &[u8]) -> Cow<'_, [T]> {
    match bytemuck::try_cast_slice(bytes) {
        Ok(slice) => Cow::Borrowed(slice),
        Err(_) => {
            // Callers pass whole payloads of an accepted type, so the length divides.
            let mut owned = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>()];
            bytemuck::cast_slice_mut::<T, u8>(&mut owned).copy_from_slice(bytes);
            Cow::Owned(owned)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misaligned_payload_is_copied_with_the_same_values() {
        let values = [1.5f32, -2.25, 1e-3, 65504.0];
        let mut buf = [0u8; 4 + 16];
        // Pick a start that is misaligned for f32 wherever the Vec landed.
        let start = (0..4)
            .find(|o| !(buf.as_ptr() as usize + o).is_multiple_of(4))
            .unwrap();
        for (i, v) in values.iter().enumerate() {
            buf[start + 4 * i..start + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        let view = cast_payload::<f32>(&buf[start..start + 16]);
        assert!(matches!(view, Cow::Owned(_)));
        assert_eq!(&*view, &values);
    }

    #[test]
    fn accepted_types_follow_the_element_type() {
        assert!(i32::accepts(ElemType::I32));
        assert!(!f32::accepts(ElemType::I32));
        assert!(u8::accepts(ElemType::F8E4M3));
        assert!(!half::bf16::accepts(ElemType::F16));
    }
}
