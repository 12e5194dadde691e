//! Argument checks shared by the kernel launchers: a kernel indexes raw
//! device memory, so kind, device, length and layout are checked (metadata
//! only, no libtorch op) before anything is launched.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Checks that `t` is on `device` and contiguous.
pub(crate) fn check_placed(
    name: &str,
    what: &'static str,
    t: &Tensor,
    device: Device,
) -> Result<()> {
    if t.device() != device {
        return Err(Error::DeviceMismatch {
            name: name.into(),
            what,
            expected: device,
            got: t.device(),
        });
    }
    if !t.is_contiguous() {
        return Err(Error::NotContiguous {
            name: name.into(),
            what,
            strides: t.stride(),
        });
    }
    Ok(())
}

/// Checks kind, placement, contiguity and element count.
pub(crate) fn check_tensor(
    name: &str,
    what: &'static str,
    t: &Tensor,
    kind: Kind,
    numel: usize,
    device: Device,
) -> Result<()> {
    let got = t.f_kind()?;
    if got != kind {
        return Err(Error::WrongKind {
            name: name.into(),
            what,
            expected: kind_label(kind),
            got,
        });
    }
    check_placed(name, what, t, device)?;
    if t.numel() != numel {
        return Err(Error::LengthMismatch {
            name: name.into(),
            what,
            expected: numel,
            got: t.numel(),
        });
    }
    Ok(())
}

/// The name of `kind` in error messages.
pub(crate) fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "BFloat16",
        Kind::Float => "Float",
        Kind::Int => "Int (i32)",
        Kind::Uint8 => "Uint8",
        _ => "another kind",
    }
}

/// A libtorch shape as element counts (for shape errors).
pub(crate) fn dims(size: &[i64]) -> Vec<usize> {
    size.iter().map(|&d| d as usize).collect()
}
