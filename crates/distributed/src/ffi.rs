//! The C ABI of cpp/shim.cpp. Constants mirror cpp/shim.h.
use std::os::raw::{c_char, c_int};

use tch::Tensor;

pub const BACKEND_GLOO: c_int = 0;
pub const BACKEND_NCCL: c_int = 1;
pub const OP_SUM: c_int = 0;
pub const OP_MAX: c_int = 1;
pub const OP_MIN: c_int = 2;

#[repr(C)]
pub struct RawGroup {
    _private: [u8; 0],
}

#[repr(C)]
pub struct RawWork {
    _private: [u8; 0],
}

/// An `at::Tensor*`, as tch hands it out (tch does not re-export its C type).
pub type RawTensor = *mut std::ffi::c_void;

/// The shim writes through this pointer only into the tensor's storage, which the
/// collectives own by contract; the `at::Tensor` handle itself is not changed.
pub fn raw(tensor: &Tensor) -> RawTensor {
    tensor.as_ptr().cast::<std::ffi::c_void>().cast_mut()
}

extern "C" {
    pub fn dist_pg_new(
        backend: c_int,
        host: *const c_char,
        port: u16,
        rank: c_int,
        world_size: c_int,
        timeout_ms: i64,
        err: *mut *mut c_char,
    ) -> *mut RawGroup;
    pub fn dist_pg_free(pg: *mut RawGroup);
    pub fn dist_work_free(work: *mut RawWork);
    pub fn dist_free_message(message: *mut c_char);
    pub fn dist_work_wait(work: *mut RawWork, err: *mut *mut c_char) -> bool;
    pub fn dist_all_reduce(
        pg: *mut RawGroup,
        tensor: RawTensor,
        op: c_int,
        err: *mut *mut c_char,
    ) -> *mut RawWork;
    pub fn dist_broadcast(
        pg: *mut RawGroup,
        tensor: RawTensor,
        root: c_int,
        err: *mut *mut c_char,
    ) -> *mut RawWork;
    pub fn dist_reduce(
        pg: *mut RawGroup,
        tensor: RawTensor,
        root: c_int,
        op: c_int,
        err: *mut *mut c_char,
    ) -> *mut RawWork;
    pub fn dist_all_gather(
        pg: *mut RawGroup,
        output: RawTensor,
        input: RawTensor,
        err: *mut *mut c_char,
    ) -> *mut RawWork;
    pub fn dist_reduce_scatter(
        pg: *mut RawGroup,
        output: RawTensor,
        input: RawTensor,
        op: c_int,
        err: *mut *mut c_char,
    ) -> *mut RawWork;
    pub fn dist_barrier(pg: *mut RawGroup, err: *mut *mut c_char) -> *mut RawWork;
}

/// Takes ownership of a message the shim allocated (null: none).
pub fn take_message(message: *mut c_char) -> String {
    if message.is_null() {
        return "unknown error (no message)".to_owned();
    }
    // SAFETY: the shim hands out NUL-terminated strings from malloc, freed here once.
    let text = unsafe { std::ffi::CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    unsafe { dist_free_message(message) };
    text
}
