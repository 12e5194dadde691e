// C ABI over libtorch's c10d: TCPStore rendezvous plus one process-group backend
// (Gloo on CPU, NCCL on CUDA). Rust owns all policy; this file only translates
// calls and turns C++ exceptions into error strings, because an exception that
// crosses the FFI boundary aborts the process.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "shim.h"

struct dist_pg {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

struct dist_work {
  c10::intrusive_ptr<c10d::Work> work;
};

namespace {

char* copy_message(const char* what) {
  size_t n = std::strlen(what);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, what, n + 1);
  }
  return out;
}

// Runs `body`; on a C++ exception stores its message in *err and returns false.
template <typename F>
bool guarded(char** err, F&& body) {
  try {
    body();
    return true;
  } catch (const c10::Error& e) {
    *err = copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = copy_message(e.what());
  } catch (...) {
    *err = copy_message("unknown C++ exception");
  }
  return false;
}

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case DIST_OP_SUM:
      return c10d::ReduceOp::SUM;
    case DIST_OP_MAX:
      return c10d::ReduceOp::MAX;
    case DIST_OP_MIN:
      return c10d::ReduceOp::MIN;
    default:
      throw std::invalid_argument("unknown reduce op " + std::to_string(op));
  }
}

dist_work* wrap(c10::intrusive_ptr<c10d::Work> work) {
  return new dist_work{std::move(work)};
}

} // namespace

extern "C" {

dist_pg* dist_pg_new(
    int backend,
    const char* host,
    uint16_t port,
    int rank,
    int world_size,
    int64_t timeout_ms,
    char** err) {
  dist_pg* pg = nullptr;
  guarded(err, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = rank == 0;
    opts.numWorkers = static_cast<size_t>(world_size);
    opts.waitWorkers = true;
    opts.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    c10::intrusive_ptr<c10d::Backend> backend_ptr;
    if (backend == DIST_BACKEND_GLOO) {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      backend_ptr = c10::make_intrusive<c10d::ProcessGroupGloo>(
          store, rank, world_size, options);
    } else if (backend == DIST_BACKEND_NCCL) {
      backend_ptr = dist_new_nccl(store, rank, world_size, timeout);
    } else {
      throw std::invalid_argument("unknown backend " + std::to_string(backend));
    }
    pg = new dist_pg{store, backend_ptr};
  });
  return pg;
}

void dist_pg_free(dist_pg* pg) {
  delete pg;
}

void dist_work_free(dist_work* work) {
  delete work;
}

void dist_free_message(char* message) {
  std::free(message);
}

bool dist_work_wait(dist_work* work, char** err) {
  return guarded(err, [&] { work->work->wait(); });
}

dist_work* dist_all_reduce(dist_pg* pg, at::Tensor* tensor, int op, char** err) {
  dist_work* out = nullptr;
  guarded(err, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = reduce_op(op);
    out = wrap(pg->backend->allreduce(tensors, opts));
  });
  return out;
}

dist_work* dist_broadcast(dist_pg* pg, at::Tensor* tensor, int root, char** err) {
  dist_work* out = nullptr;
  guarded(err, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    out = wrap(pg->backend->broadcast(tensors, opts));
  });
  return out;
}

// Reduces every rank's tensor into rank `root`'s (in place). Only the root's
// tensor holds the result afterwards; the others' content is unspecified
// (Gloo and NCCL may use them as scratch).
dist_work* dist_reduce(
    dist_pg* pg,
    at::Tensor* tensor,
    int root,
    int op,
    char** err) {
  dist_work* out = nullptr;
  guarded(err, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::ReduceOptions opts;
    opts.reduceOp = reduce_op(op);
    opts.rootRank = root;
    out = wrap(pg->backend->reduce(tensors, opts));
  });
  return out;
}

dist_work* dist_all_gather(
    dist_pg* pg,
    at::Tensor* output,
    at::Tensor* input,
    char** err) {
  dist_work* out = nullptr;
  guarded(err, [&] {
    out = wrap(pg->backend->_allgather_base(*output, *input));
  });
  return out;
}

dist_work* dist_reduce_scatter(
    dist_pg* pg,
    at::Tensor* output,
    at::Tensor* input,
    int op,
    char** err) {
  dist_work* out = nullptr;
  guarded(err, [&] {
    c10d::ReduceScatterOptions opts;
    opts.reduceOp = reduce_op(op);
    out = wrap(pg->backend->_reduce_scatter_base(*output, *input, opts));
  });
  return out;
}

dist_work* dist_barrier(dist_pg* pg, char** err) {
  dist_work* out = nullptr;
  guarded(err, [&] { out = wrap(pg->backend->barrier()); });
  return out;
}

} // extern "C"
