//! Element types of the `.dat` format (docs/Formats.md, "Element types"):
//! the numeric codes written by the original tools, their sizes, and their
//! mapping to tch kinds.

use tch::Kind;

/// The element type of one `.dat` entry, as coded in its header.
///
/// The codes are libtorch's `ScalarType` numbers (which is what the original
/// tools wrote), so a reader must never reinterpret them: code 3 is `i32`
/// (the original misread it as `f32`, docs/Formats.md "Defects of the original").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElemType {
    /// Code 0: `u8`. Also the element type of NVFP4 `.qdata` (packed nibbles).
    U8,
    /// Code 1: `i8`.
    I8,
    /// Code 2: little-endian `i16`.
    I16,
    /// Code 3: little-endian `i32`.
    I32,
    /// Code 4: little-endian `i64`.
    I64,
    /// Code 5: IEEE half precision.
    F16,
    /// Code 6: IEEE single precision.
    F32,
    /// Code 7: IEEE double precision.
    F64,
    /// Code 11: one byte per element, 0 or 1.
    Bool,
    /// Code 15: bfloat16.
    BF16,
    /// Code 100: `float4_e2m1fn_x2`, two E2M1 values packed in one byte
    /// (even element in the low nibble); shape `[out, in/2]`.
    F4E2M1x2,
    /// Code 101: `float8_e4m3fn`, the type of NVFP4 block scales.
    F8E4M3,
}

impl ElemType {
    /// Every element type, in code order.
    pub const ALL: [ElemType; 12] = [
        ElemType::U8,
        ElemType::I8,
        ElemType::I16,
        ElemType::I32,
        ElemType::I64,
        ElemType::F16,
        ElemType::F32,
        ElemType::F64,
        ElemType::Bool,
        ElemType::BF16,
        ElemType::F4E2M1x2,
        ElemType::F8E4M3,
    ];

    /// The code written in a `.dat` header.
    pub fn code(self) -> u64 {
        match self {
            ElemType::U8 => 0,
            ElemType::I8 => 1,
            ElemType::I16 => 2,
            ElemType::I32 => 3,
            ElemType::I64 => 4,
            ElemType::F16 => 5,
            ElemType::F32 => 6,
            ElemType::F64 => 7,
            ElemType::Bool => 11,
            ElemType::BF16 => 15,
            ElemType::F4E2M1x2 => 100,
            ElemType::F8E4M3 => 101,
        }
    }

    /// The element type of a header code, `None` for a code the format does not define.
    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }

    /// Bytes per stored element (one byte holds two values for [`ElemType::F4E2M1x2`]).
    pub fn size(self) -> usize {
        match self {
            ElemType::U8
            | ElemType::I8
            | ElemType::Bool
            | ElemType::F4E2M1x2
            | ElemType::F8E4M3 => 1,
            ElemType::I16 | ElemType::F16 | ElemType::BF16 => 2,
            ElemType::I32 | ElemType::F32 => 4,
            ElemType::I64 | ElemType::F64 => 8,
        }
    }

    /// The tch kind a tensor of this type is loaded as. The two NVFP4 storage
    /// types load as raw `Uint8` bytes: their arithmetic lives in `nvfp4-kernels`.
    pub fn kind(self) -> Kind {
        match self {
            ElemType::U8 | ElemType::F4E2M1x2 | ElemType::F8E4M3 => Kind::Uint8,
            ElemType::I8 => Kind::Int8,
            ElemType::I16 => Kind::Int16,
            ElemType::I32 => Kind::Int,
            ElemType::I64 => Kind::Int64,
            ElemType::F16 => Kind::Half,
            ElemType::F32 => Kind::Float,
            ElemType::F64 => Kind::Double,
            ElemType::Bool => Kind::Bool,
            ElemType::BF16 => Kind::BFloat16,
        }
    }

    /// The element type that stores a tensor of `kind`, `None` for kinds the
    /// format cannot hold (complex, quantized, other FP8 variants).
    /// `Uint8` maps to [`ElemType::U8`]; `Float8e4m3fn` to [`ElemType::F8E4M3`].
    pub fn from_kind(kind: Kind) -> Option<Self> {
        Some(match kind {
            Kind::Uint8 => ElemType::U8,
            Kind::Int8 => ElemType::I8,
            Kind::Int16 => ElemType::I16,
            Kind::Int => ElemType::I32,
            Kind::Int64 => ElemType::I64,
            Kind::Half => ElemType::F16,
            Kind::Float => ElemType::F32,
            Kind::Double => ElemType::F64,
            Kind::Bool => ElemType::Bool,
            Kind::BFloat16 => ElemType::BF16,
            Kind::Float8e4m3fn => ElemType::F8E4M3,
            _ => return None,
        })
    }

    /// True for the types a model keeps as floating-point values it computes
    /// with (f16, bf16, f32, f64). The packed FP4 and FP8 scale types are not:
    /// they are raw codes that only make sense through an NVFP4 decoder.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            ElemType::F16 | ElemType::BF16 | ElemType::F32 | ElemType::F64
        )
    }

    /// A short lowercase name (`bf16`, `f8_e4m3`, ...), used in messages and tables.
    pub fn name(self) -> &'static str {
        match self {
            ElemType::U8 => "u8",
            ElemType::I8 => "i8",
            ElemType::I16 => "i16",
            ElemType::I32 => "i32",
            ElemType::I64 => "i64",
            ElemType::F16 => "f16",
            ElemType::F32 => "f32",
            ElemType::F64 => "f64",
            ElemType::Bool => "bool",
            ElemType::BF16 => "bf16",
            ElemType::F4E2M1x2 => "f4_e2m1x2",
            ElemType::F8E4M3 => "f8_e4m3",
        }
    }
}

impl std::fmt::Display for ElemType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_rejected() {
        for e in ElemType::ALL {
            assert_eq!(ElemType::from_code(e.code()), Some(e));
        }
        let known: Vec<u64> = ElemType::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(known, [0, 1, 2, 3, 4, 5, 6, 7, 11, 15, 100, 101]);
        for code in [8, 9, 10, 12, 13, 14, 16, 23, 24, 99, 102, u64::MAX] {
            assert_eq!(ElemType::from_code(code), None, "code {code}");
        }
    }

    #[test]
    fn sizes_match_the_reference_table() {
        let sizes: Vec<usize> = ElemType::ALL.iter().map(|e| e.size()).collect();
        assert_eq!(sizes, [1, 1, 2, 4, 8, 2, 4, 8, 1, 2, 1, 1]);
    }

    #[test]
    fn kind_sizes_agree_with_elem_sizes() {
        for e in ElemType::ALL {
            assert_eq!(e.kind().elt_size_in_bytes(), e.size(), "{e}");
        }
    }

    #[test]
    fn code_3_is_i32_not_f32() {
        // Regression for the original's defect "elem type 3 read as f32".
        assert_eq!(ElemType::from_code(3).map(ElemType::kind), Some(Kind::Int));
    }

    #[test]
    fn from_kind_inverts_kind_for_non_nvfp4_types() {
        for e in ElemType::ALL {
            match e {
                ElemType::F4E2M1x2 | ElemType::F8E4M3 => {
                    assert_eq!(ElemType::from_kind(e.kind()), Some(ElemType::U8))
                }
                _ => assert_eq!(ElemType::from_kind(e.kind()), Some(e)),
            }
        }
        assert_eq!(ElemType::from_kind(Kind::ComplexFloat), None);
    }
}
