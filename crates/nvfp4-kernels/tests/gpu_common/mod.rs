//! Helpers shared by the GPU test binaries (gpu_kernels, gpu_matmul).
#![allow(dead_code)] // each binary uses a subset

use nvfp4_kernels::{
    dequantize_ref, quantize_ref, Nvfp4Host, Nvfp4HostRef, Nvfp4Tensor, ScaleMode,
};
use tch::{Device, Kind, Tensor};

pub fn to_vec_f32(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).to_device(Device::Cpu).flatten(0, -1))
        .expect("f32 vec")
}

pub fn to_vec_u8(t: &Tensor) -> Vec<u8> {
    Vec::<u8>::try_from(t.to_device(Device::Cpu).flatten(0, -1)).expect("u8 vec")
}

/// Weight-like data exercising every branch of the quantizer: per-row scales
/// from 1e-7 (subnormal and zero E4M3 scales) to 1e4 (saturation in Single
/// mode), all-zero blocks, negative zeros, and blocks of exact E2M1 ties.
pub fn weight_like(rows: usize, cols: usize, bf16: bool) -> Vec<f32> {
    let exp = Tensor::rand([rows as i64, 1], (Kind::Float, Device::Cpu)) * 11.0 - 7.0;
    let row_scale = Tensor::from(10.0f32).pow(&exp);
    let t = Tensor::randn([rows as i64, cols as i64], (Kind::Float, Device::Cpu)) * row_scale;
    let t = if bf16 {
        t.to_kind(Kind::BFloat16).to_kind(Kind::Float)
    } else {
        t
    };
    let mut v = to_vec_f32(&t);
    let ties = [
        6.0f32, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5,
        -5.0, 0.5,
    ];
    for (b, block) in v.chunks_exact_mut(16).enumerate() {
        match b % 23 {
            0 => block.fill(0.0),
            5 => {
                // amax 6 * 2^k: the block scale is exactly 2^k, the rest are ties.
                let p = 2f32.powi((b % 13) as i32 - 6);
                block.iter_mut().zip(ties).for_each(|(d, t)| *d = t * p);
            }
            _ => {}
        }
        if b % 7 == 3 {
            block[b % 16] = -0.0;
        }
    }
    v
}

pub fn upload(v: &[f32], rows: usize, cols: usize, kind: Kind, dev: Device) -> Tensor {
    Tensor::from_slice(v)
        .view([rows as i64, cols as i64])
        .to_kind(kind)
        .to_device(dev)
}

/// Best effort: fill and free blocks of the sizes about to be allocated so
/// libtorch's caching allocator hands out memory holding 0xA5, not zeros.
pub fn poison_allocator(dev: Device, bytes: &[usize]) {
    let held: Vec<Tensor> = bytes
        .iter()
        .map(|&n| Tensor::full([n as i64], 0xA5, (Kind::Uint8, dev)))
        .collect();
    drop(held);
}

pub fn first_mismatch<T: PartialEq + Copy + std::fmt::Debug>(
    got: &[T],
    want: &[T],
) -> Option<(usize, T, T)> {
    got.iter()
        .zip(want)
        .enumerate()
        .find(|(_, (g, w))| g != w)
        .map(|(i, (g, w))| (i, *g, *w))
}

pub fn assert_host_eq(what: &str, got: &Nvfp4Host, want: &Nvfp4Host) {
    assert_eq!(
        got.global_scale.map(f32::to_bits),
        want.global_scale.map(f32::to_bits),
        "{what}: global scale"
    );
    assert_eq!(
        first_mismatch(&got.scale, &want.scale),
        None,
        "{what}: scale (index, got, want)"
    );
    assert_eq!(
        first_mismatch(&got.qdata, &want.qdata),
        None,
        "{what}: qdata (index, got, want)"
    );
}

/// f32 bits with every NaN mapped to one pattern (payloads differ by path).
pub fn canon_bits(v: &[f32]) -> Vec<u32> {
    v.iter()
        .map(|x| if x.is_nan() { 0x7FC0_0000 } else { x.to_bits() })
        .collect()
}

/// bf16 bits (as u16 in i16 storage) of an f32 CPU tensor rounded by torch (RNE).
pub fn bf16_bits_of(t: &Tensor) -> Vec<u16> {
    let b = t
        .to_device(Device::Cpu)
        .to_kind(Kind::BFloat16)
        .view_dtype(Kind::Int16)
        .flatten(0, -1);
    Vec::<i16>::try_from(b)
        .expect("i16")
        .into_iter()
        .map(|x| x as u16)
        .collect()
}

pub fn canon_bf16(v: Vec<u16>) -> Vec<u16> {
    v.into_iter()
        .map(|h| if h & 0x7FFF > 0x7F80 { 0x7FC0 } else { h })
        .collect()
}

/// `dequantize_ref(quantize_ref(x))` as f32, the exact value fake-quantize must give.
pub fn fake_quant_ref(host: &[f32], rows: usize, cols: usize, mode: ScaleMode) -> Vec<f32> {
    dequantize_ref(&quantize_ref(host, rows, cols, mode).unwrap().as_ref())
}

/// Random NVFP4 weight on `dev`: every code, scales across the E4M3 range
/// (subnormal, negative, 448; no NaN), optional global scale.
pub fn random_weight(rows: usize, cols: usize, global: Option<f32>, dev: Device) -> Nvfp4Tensor {
    let qdata = to_vec_u8(&Tensor::randint(
        256,
        [(rows * cols / 2) as i64],
        (Kind::Uint8, Device::Cpu),
    ));
    let scale: Vec<u8> = to_vec_u8(&Tensor::randint(
        0x7F,
        [(rows * cols / 16) as i64],
        (Kind::Uint8, Device::Cpu),
    ))
    .into_iter()
    .enumerate()
    .map(|(i, s)| if i % 5 == 0 { s | 0x80 } else { s })
    .collect();
    let r = Nvfp4HostRef::new(&qdata, &scale, rows, cols, global).unwrap();
    Nvfp4Tensor::from_host(&r, dev).unwrap()
}
