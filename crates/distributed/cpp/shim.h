// Internal interface between shim.cpp (Gloo, store) and nccl.cpp (CUDA only).
#pragma once

#include <chrono>
#include <cstdint>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

// Values mirrored in src/ffi.rs.
constexpr int DIST_BACKEND_GLOO = 0;
constexpr int DIST_BACKEND_NCCL = 1;
constexpr int DIST_OP_SUM = 0;
constexpr int DIST_OP_MAX = 1;
constexpr int DIST_OP_MIN = 2;

// Defined in nccl.cpp; throws when libtorch was built without NCCL.
c10::intrusive_ptr<c10d::Backend> dist_new_nccl(
    const c10::intrusive_ptr<c10d::Store>& store,
    int rank,
    int world_size,
    std::chrono::milliseconds timeout);
