//! The one mapping between tch kinds and safetensors dtypes. Every kind that
//! has a safetensors dtype of the same width and meaning is stored as that
//! dtype, so bytes go in and come out unchanged (f32, bf16, i8/u8, ...).

use safetensors::Dtype;
use tch::Kind;

/// The safetensors dtype that stores `kind` bit-exactly, if any.
pub(crate) fn dtype_of_kind(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Float8e4m3fn => Dtype::F8_E4M3,
        Kind::Float8e5m2 => Dtype::F8_E5M2,
        _ => return None,
    })
}

/// The tch kind a safetensors dtype loads as, if torch has one.
pub(crate) fn kind_of_dtype(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F8_E4M3 => Kind::Float8e4m3fn,
        Dtype::F8_E5M2 => Kind::Float8e5m2,
        _ => return None,
    })
}

/// The dtype's name as safetensors writes it ("F32", "BF16", ...).
pub(crate) fn dtype_name(dtype: Dtype) -> String {
    // Dtype's serde form is its safetensors name; the Debug form is the same.
    format!("{dtype:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_map_every_storable_kind_back_to_itself() {
        let kinds = [
            Kind::Bool,
            Kind::Uint8,
            Kind::Int8,
            Kind::Int16,
            Kind::Int,
            Kind::Int64,
            Kind::Half,
            Kind::BFloat16,
            Kind::Float,
            Kind::Double,
            Kind::Float8e4m3fn,
            Kind::Float8e5m2,
        ];
        for kind in kinds {
            let dtype = dtype_of_kind(kind).unwrap();
            assert_eq!(dtype.size(), kind.elt_size_in_bytes(), "{kind:?}");
            assert_eq!(kind_of_dtype(dtype), Some(kind));
        }
    }

    #[test]
    fn should_refuse_kinds_without_a_safetensors_dtype() {
        assert_eq!(dtype_of_kind(Kind::ComplexFloat), None);
        assert_eq!(dtype_of_kind(Kind::QInt8), None);
        assert_eq!(dtype_name(Dtype::F8_E4M3), "F8_E4M3");
    }
}
