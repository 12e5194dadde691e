//! NVFP4 data in host memory: an owned [`Nvfp4Host`] (what the CPU quantizer
//! produces) and a borrowed [`Nvfp4HostRef`] (what a memory-mapped `.dat`
//! file hands out without copying). Both are validated once, at construction.

use crate::error::{Error, Result};
use crate::format::{unpack_nibbles, BLOCK_SIZE};

/// Owned NVFP4 matrix `[rows, cols]` in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Nvfp4Host {
    /// Packed E2M1 codes, row-major `[rows, cols/2]`, element `2j` in the low nibble.
    pub qdata: Vec<u8>,
    /// E4M3FN block-scale bytes, row-major `[rows, cols/16]`.
    pub scale: Vec<u8>,
    /// Logical rows (`out` of a weight).
    pub rows: usize,
    /// Logical columns (`in` of a weight), a multiple of 16.
    pub cols: usize,
    /// Optional per-tensor f32 scale (two-level mode); `None` means 1.
    pub global_scale: Option<f32>,
}

/// Borrowed NVFP4 matrix `[rows, cols]`, e.g. a view into a mapped file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Nvfp4HostRef<'a> {
    /// Packed E2M1 codes `[rows, cols/2]`.
    pub qdata: &'a [u8],
    /// E4M3FN block-scale bytes `[rows, cols/16]`.
    pub scale: &'a [u8],
    /// Logical rows.
    pub rows: usize,
    /// Logical columns, a multiple of 16.
    pub cols: usize,
    /// Optional per-tensor f32 scale; `None` means 1.
    pub global_scale: Option<f32>,
}

/// Checks that `rows x cols` with these buffer lengths and global scale is a
/// valid NVFP4 matrix; `name` is used in the error.
pub(crate) fn validate_parts(
    name: &str,
    qdata_len: usize,
    scale_len: usize,
    rows: usize,
    cols: usize,
    global_scale: Option<f32>,
) -> Result<()> {
    if !cols.is_multiple_of(BLOCK_SIZE) {
        return Err(Error::ColsNotMultipleOfBlock {
            name: name.to_string(),
            rows,
            cols,
        });
    }
    let want_q = rows.checked_mul(cols / 2);
    if want_q != Some(qdata_len) {
        return Err(Error::LengthMismatch {
            name: name.to_string(),
            what: "qdata",
            expected: want_q.unwrap_or(usize::MAX),
            got: qdata_len,
        });
    }
    let want_s = rows * (cols / BLOCK_SIZE);
    if want_s != scale_len {
        return Err(Error::LengthMismatch {
            name: name.to_string(),
            what: "scale",
            expected: want_s,
            got: scale_len,
        });
    }
    check_global_scale(name, global_scale)
}

/// A global scale, when present, must be finite and positive.
pub(crate) fn check_global_scale(name: &str, global_scale: Option<f32>) -> Result<()> {
    match global_scale {
        Some(g) if !(g.is_finite() && g > 0.0) => Err(Error::BadGlobalScale {
            name: name.to_string(),
            value: g,
        }),
        _ => Ok(()),
    }
}

impl<'a> Nvfp4HostRef<'a> {
    /// Wraps borrowed buffers after checking their lengths against `[rows, cols]`.
    pub fn new(
        qdata: &'a [u8],
        scale: &'a [u8],
        rows: usize,
        cols: usize,
        global_scale: Option<f32>,
    ) -> Result<Self> {
        Self::new_named("nvfp4", qdata, scale, rows, cols, global_scale)
    }

    /// Like [`Nvfp4HostRef::new`], naming the tensor (e.g. its file key) in errors.
    pub fn new_named(
        name: &str,
        qdata: &'a [u8],
        scale: &'a [u8],
        rows: usize,
        cols: usize,
        global_scale: Option<f32>,
    ) -> Result<Self> {
        validate_parts(name, qdata.len(), scale.len(), rows, cols, global_scale)?;
        Ok(Self {
            qdata,
            scale,
            rows,
            cols,
            global_scale,
        })
    }

    /// Number of 16-element blocks per row (`cols / 16`).
    pub fn scale_cols(&self) -> usize {
        self.cols / BLOCK_SIZE
    }

    /// E2M1 code of element `(row, col)`.
    pub fn code(&self, row: usize, col: usize) -> u8 {
        let (even, odd) = unpack_nibbles(self.qdata[row * (self.cols / 2) + col / 2]);
        if col.is_multiple_of(2) {
            even
        } else {
            odd
        }
    }

    /// E4M3 scale byte of element `(row, col)`'s block.
    pub fn scale_byte(&self, row: usize, col: usize) -> u8 {
        self.scale[row * self.scale_cols() + col / BLOCK_SIZE]
    }

    /// Copies the borrowed buffers into an owned [`Nvfp4Host`].
    pub fn to_owned_host(&self) -> Nvfp4Host {
        Nvfp4Host {
            qdata: self.qdata.to_vec(),
            scale: self.scale.to_vec(),
            rows: self.rows,
            cols: self.cols,
            global_scale: self.global_scale,
        }
    }
}

impl Nvfp4Host {
    /// Takes ownership of the buffers after checking their lengths.
    pub fn new(
        qdata: Vec<u8>,
        scale: Vec<u8>,
        rows: usize,
        cols: usize,
        global_scale: Option<f32>,
    ) -> Result<Self> {
        validate_parts("nvfp4", qdata.len(), scale.len(), rows, cols, global_scale)?;
        Ok(Self {
            qdata,
            scale,
            rows,
            cols,
            global_scale,
        })
    }

    /// Borrows this matrix. The fields are public, so a hand-built `Nvfp4Host`
    /// may be inconsistent; paths that index the buffers re-check through
    /// [`Nvfp4HostRef::new`] (see [`Nvfp4Host::validated_ref`]).
    pub fn as_ref(&self) -> Nvfp4HostRef<'_> {
        Nvfp4HostRef {
            qdata: &self.qdata,
            scale: &self.scale,
            rows: self.rows,
            cols: self.cols,
            global_scale: self.global_scale,
        }
    }

    /// Borrows this matrix after re-validating its (public) fields.
    pub fn validated_ref(&self) -> Result<Nvfp4HostRef<'_>> {
        Nvfp4HostRef::new(
            &self.qdata,
            &self.scale,
            self.rows,
            self.cols,
            self.global_scale,
        )
    }

    /// Bytes of packed data plus scales.
    pub fn nbytes(&self) -> usize {
        self.qdata.len() + self.scale.len()
    }
}

/// Validates the shapes of a `.qdata` (`[out, in/2]`) / `.scale` (`[out, in/16]`)
/// pair as stored in a file; returns `(rows, cols) = (out, in)`.
pub fn check_pair_shapes(
    name: &str,
    qdata_shape: &[usize],
    scale_shape: &[usize],
) -> Result<(usize, usize)> {
    for (what, shape) in [("qdata", qdata_shape), ("scale", scale_shape)] {
        if shape.len() != 2 {
            return Err(Error::WrongRank {
                name: name.to_string(),
                what,
                expected: 2,
                got: shape.to_vec(),
            });
        }
    }
    let rows = qdata_shape[0];
    let cols = qdata_shape[1]
        .checked_mul(2)
        .ok_or_else(|| Error::ShapeMismatch {
            name: name.to_string(),
            what: "qdata",
            expected: vec![rows, usize::MAX / 2],
            got: qdata_shape.to_vec(),
        })?;
    if !cols.is_multiple_of(BLOCK_SIZE) {
        return Err(Error::ColsNotMultipleOfBlock {
            name: name.to_string(),
            rows,
            cols,
        });
    }
    let expected = vec![rows, cols / BLOCK_SIZE];
    if scale_shape != expected.as_slice() {
        return Err(Error::ShapeMismatch {
            name: name.to_string(),
            what: "scale",
            expected,
            got: scale_shape.to_vec(),
        });
    }
    Ok((rows, cols))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_shapes_give_logical_shape() {
        assert_eq!(
            check_pair_shapes("w", &[4096, 1280], &[4096, 160]).unwrap(),
            (4096, 2560)
        );
    }

    #[test]
    fn pair_shapes_reject_scale_rows_mismatch() {
        let err = check_pair_shapes("w", &[8, 16], &[7, 2]).unwrap_err();
        assert!(
            matches!(&err, Error::ShapeMismatch { what: "scale", expected, got, .. }
            if expected == &vec![8, 2] && got == &vec![7, 2]),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("w: scale has shape [7, 2], expected [8, 2]"),
            "{err}"
        );
    }

    #[test]
    fn pair_shapes_reject_cols_not_multiple_of_16() {
        let err = check_pair_shapes("w", &[8, 12], &[8, 1]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ColsNotMultipleOfBlock {
                    rows: 8,
                    cols: 24,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn pair_shapes_reject_wrong_rank() {
        let err = check_pair_shapes("w", &[8, 8, 1], &[8, 1]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::WrongRank {
                    what: "qdata",
                    expected: 2,
                    ..
                }
            ),
            "{err}"
        );
        let err = check_pair_shapes("w", &[8, 8], &[8]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::WrongRank {
                    what: "scale",
                    expected: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn host_ref_rejects_wrong_lengths_with_expected_and_got() {
        let q = vec![0u8; 2 * 16];
        let s = vec![0u8; 4];
        let err = Nvfp4HostRef::new(&q[..31], &s, 2, 32, None).unwrap_err();
        assert!(matches!(
            err,
            Error::LengthMismatch {
                what: "qdata",
                expected: 32,
                got: 31,
                ..
            }
        ));
        let err = Nvfp4HostRef::new(&q, &s[..3], 2, 32, None).unwrap_err();
        assert!(matches!(
            err,
            Error::LengthMismatch {
                what: "scale",
                expected: 4,
                got: 3,
                ..
            }
        ));
        let err = Nvfp4HostRef::new(&q, &s, 2, 33, None).unwrap_err();
        assert!(matches!(
            err,
            Error::ColsNotMultipleOfBlock { cols: 33, .. }
        ));
    }

    #[test]
    fn host_ref_rejects_bad_global_scale() {
        let q = vec![0u8; 8];
        let s = vec![0u8; 1];
        for g in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let err = Nvfp4HostRef::new(&q, &s, 1, 16, Some(g)).unwrap_err();
            assert!(
                matches!(err, Error::BadGlobalScale { .. }),
                "g = {g}: {err}"
            );
        }
    }

    #[test]
    fn code_and_scale_accessors_follow_the_packing() {
        // Row of 32: element 2j low nibble, 2j+1 high nibble; blocks of 16.
        let mut q = vec![0u8; 16];
        q[0] = 0x21; // elements 0 -> 1, 1 -> 2
        q[15] = 0xF0; // element 31 -> 0xF
        let s = vec![0x38, 0x40];
        let r = Nvfp4HostRef::new(&q, &s, 1, 32, None).unwrap();
        assert_eq!((r.code(0, 0), r.code(0, 1), r.code(0, 31)), (1, 2, 0xF));
        assert_eq!((r.scale_byte(0, 15), r.scale_byte(0, 16)), (0x38, 0x40));
    }
}
