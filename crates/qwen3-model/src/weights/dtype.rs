//! The one table between safetensors dtypes and the `.dat` element types
//! (and through [`ElemType::kind`], tch kinds) that the readers, the
//! converters and the exporters of this crate share.

use dat_format::ElemType;
use safetensors::Dtype;
use tch::Kind;

/// The `.dat` element type of a safetensors dtype, `None` for dtypes the
/// format cannot hold (unsigned 16/32/64-bit, FP8 E5M2).
pub(crate) fn elem_of_dtype(dtype: Dtype) -> Option<ElemType> {
    Some(match dtype {
        Dtype::BOOL => ElemType::Bool,
        Dtype::U8 => ElemType::U8,
        Dtype::I8 => ElemType::I8,
        Dtype::F8_E4M3 => ElemType::F8E4M3,
        Dtype::I16 => ElemType::I16,
        Dtype::F16 => ElemType::F16,
        Dtype::BF16 => ElemType::BF16,
        Dtype::I32 => ElemType::I32,
        Dtype::F32 => ElemType::F32,
        Dtype::F64 => ElemType::F64,
        Dtype::I64 => ElemType::I64,
        _ => return None,
    })
}

/// The safetensors dtype that stores `elem` (packed FP4 pairs as raw `U8`,
/// safetensors having no such dtype).
pub(crate) fn dtype_of_elem(elem: ElemType) -> Dtype {
    match elem {
        ElemType::U8 | ElemType::F4E2M1x2 => Dtype::U8,
        ElemType::I8 => Dtype::I8,
        ElemType::I16 => Dtype::I16,
        ElemType::I32 => Dtype::I32,
        ElemType::I64 => Dtype::I64,
        ElemType::F16 => Dtype::F16,
        ElemType::F32 => Dtype::F32,
        ElemType::F64 => Dtype::F64,
        ElemType::Bool => Dtype::BOOL,
        ElemType::BF16 => Dtype::BF16,
        ElemType::F8E4M3 => Dtype::F8_E4M3,
    }
}

/// The weight float types (bf16, f16, f32) as the element type that holds
/// them; `None` for every other dtype.
pub(crate) fn weight_float(dtype: Dtype) -> Option<ElemType> {
    elem_of_dtype(dtype).filter(|e| matches!(e, ElemType::BF16 | ElemType::F16 | ElemType::F32))
}

/// The tch kind of a weight float dtype (bf16, f16, f32); `None` otherwise.
pub(crate) fn float_kind(dtype: Dtype) -> Option<Kind> {
    weight_float(dtype).map(ElemType::kind)
}

/// The safetensors dtype of a weight float kind (bf16, f16, f32); `None` otherwise.
pub(crate) fn float_dtype(kind: Kind) -> Option<Dtype> {
    ElemType::from_kind(kind)
        .map(dtype_of_elem)
        .filter(|&d| weight_float(d).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_mapping_round_trips_for_every_storable_elem() {
        for elem in ElemType::ALL {
            let back = elem_of_dtype(dtype_of_elem(elem));
            let expected = if elem == ElemType::F4E2M1x2 {
                ElemType::U8
            } else {
                elem
            };
            assert_eq!(back, Some(expected), "{elem}");
        }
        assert_eq!(elem_of_dtype(Dtype::U32), None);
        assert_eq!(elem_of_dtype(Dtype::F8_E5M2), None);
    }

    #[test]
    fn weight_floats_are_bf16_f16_f32() {
        assert_eq!(float_kind(Dtype::BF16), Some(Kind::BFloat16));
        assert_eq!(float_kind(Dtype::F16), Some(Kind::Half));
        assert_eq!(float_kind(Dtype::F32), Some(Kind::Float));
        assert_eq!(float_kind(Dtype::F64), None);
        assert_eq!(float_kind(Dtype::U8), None);
        assert_eq!(float_dtype(Kind::BFloat16), Some(Dtype::BF16));
        assert_eq!(float_dtype(Kind::Float), Some(Dtype::F32));
        assert_eq!(float_dtype(Kind::Double), None);
        assert_eq!(float_dtype(Kind::Int64), None);
    }
}
