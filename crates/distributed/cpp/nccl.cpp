// ProcessGroupNCCL construction, in its own file because its header pulls in the
// CUDA runtime and NCCL headers (from the venv's nvidia wheels).
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include "shim.h"

c10::intrusive_ptr<c10d::Backend> dist_new_nccl(
    const c10::intrusive_ptr<c10d::Store>& store,
    int rank,
    int world_size,
    std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(
      store, rank, world_size, options);
}
