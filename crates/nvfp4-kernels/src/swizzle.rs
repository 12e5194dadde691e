//! The blocked ("swizzled") scale layout of cuBLAS/CUTLASS block-scaled GEMMs
//! on Blackwell (docs/Formats.md, "Swizzled scale layout"): the `[R, C]` scale
//! matrix is padded to `[128 * ceil(R/128), 4 * ceil(C/4)]` and cut into 128x4 tiles of 512
//! bytes; inside a tile, row `r` lands at `(r % 32) * 16 + ((r % 128) / 32) * 4`,
//! so the 4 rows a warp quad reads together are adjacent.

/// Rows per tile of the blocked layout.
const TILE_ROWS: usize = 128;
/// Scale columns per tile.
const TILE_COLS: usize = 4;

/// Byte offset of scale `(r, c)` in the blocked layout with `n_col_blocks`
/// (`ceil(C/4)`) tiles per tile-row.
#[inline]
pub fn blocked_offset(r: usize, c: usize, n_col_blocks: usize) -> usize {
    ((r / TILE_ROWS) * n_col_blocks + c / TILE_COLS) * (TILE_ROWS * TILE_COLS)
        + (r % 32) * 16
        + ((r % TILE_ROWS) / 32) * 4
        + c % TILE_COLS
}

/// Padded `(rows, cols)` of the blocked layout for a `[rows, scale_cols]` matrix.
pub fn blocked_shape(rows: usize, scale_cols: usize) -> (usize, usize) {
    (
        rows.div_ceil(TILE_ROWS) * TILE_ROWS,
        scale_cols.div_ceil(TILE_COLS) * TILE_COLS,
    )
}

/// Rearranges a row-major `[rows, scale_cols]` scale matrix into the blocked
/// layout; padding bytes are 0 (scale 0, so padded blocks contribute nothing).
///
/// # Panics
/// If `scale.len() != rows * scale_cols` (a programming error: shapes are
/// validated when an NVFP4 tensor is built).
pub fn swizzle_scales(scale: &[u8], rows: usize, scale_cols: usize) -> Vec<u8> {
    assert_eq!(
        scale.len(),
        rows * scale_cols,
        "scale is not [{rows}, {scale_cols}]"
    );
    let (pr, pc) = blocked_shape(rows, scale_cols);
    let ncb = pc / TILE_COLS;
    let mut out = vec![0u8; pr * pc];
    for (r, row) in scale.chunks_exact(scale_cols.max(1)).enumerate().take(rows) {
        for (c, &s) in row.iter().enumerate() {
            out[blocked_offset(r, c, ncb)] = s;
        }
    }
    out
}

/// Inverse of [`swizzle_scales`]: reads the `[rows, scale_cols]` matrix back
/// out of the (padded) blocked layout.
///
/// # Panics
/// If `blocked` is shorter than the padded size.
pub fn unswizzle_scales(blocked: &[u8], rows: usize, scale_cols: usize) -> Vec<u8> {
    let (pr, pc) = blocked_shape(rows, scale_cols);
    assert!(
        blocked.len() >= pr * pc,
        "blocked scales hold {} bytes, need {}",
        blocked.len(),
        pr * pc
    );
    let ncb = pc / TILE_COLS;
    let mut out = Vec::with_capacity(rows * scale_cols);
    for r in 0..rows {
        out.extend((0..scale_cols).map(|c| blocked[blocked_offset(r, c, ncb)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_match_the_spec_formula_on_known_points() {
        // nCB = 2 (C = 5 -> padded 8).
        assert_eq!(blocked_offset(0, 0, 2), 0);
        assert_eq!(blocked_offset(0, 3, 2), 3);
        assert_eq!(blocked_offset(1, 0, 2), 16);
        assert_eq!(blocked_offset(32, 0, 2), 4);
        assert_eq!(blocked_offset(0, 4, 2), 512);
        assert_eq!(blocked_offset(128, 0, 2), 1024);
        assert_eq!(blocked_offset(127, 3, 2), 31 * 16 + 3 * 4 + 3);
    }

    #[test]
    fn swizzle_is_a_bijection_onto_the_padded_tile() {
        // Full tiles: every offset is hit exactly once.
        let (rows, cols) = (256, 8);
        let scale: Vec<u8> = (0..rows * cols).map(|i| (i % 251) as u8).collect();
        let mut seen = vec![false; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                let o = blocked_offset(r, c, cols / 4);
                assert!(!seen[o], "offset {o} hit twice");
                seen[o] = true;
            }
        }
        assert_eq!(
            unswizzle_scales(&swizzle_scales(&scale, rows, cols), rows, cols),
            scale
        );
    }

    #[test]
    fn padding_is_zero() {
        let scale = vec![0x38u8; 3 * 5];
        let b = swizzle_scales(&scale, 3, 5);
        assert_eq!(b.len(), 128 * 8);
        assert_eq!(b.iter().filter(|&&v| v == 0x38).count(), 15);
        assert_eq!(b.iter().filter(|&&v| v == 0).count(), 128 * 8 - 15);
    }
}
