// Declarations of the few gloo types that libtorch's ProcessGroupGloo.hpp names.
//
// Why this exists: the torch wheel ships ProcessGroupGloo.hpp and exports the gloo
// backend from libtorch_cpu.so, but not gloo's own headers. ProcessGroupGloo holds
// gloo objects only behind shared_ptr/unique_ptr, so its layout does not depend on
// their definitions; our shim only calls functions defined in libtorch and never
// constructs a gloo object itself, so declarations suffice. `GlooStore` (an inline
// subclass of rendezvous::Store in that header) needs the base class with the
// virtuals it overrides; we never instantiate it.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace gloo {
class Context {
 public:
  // Named by ProcessGroupGloo::setTimeout (inline in the header).
  void setTimeout(std::chrono::milliseconds timeout);
};
namespace transport {
class Device;
class UnboundBuffer;
} // namespace transport
namespace rendezvous {
class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::vector<char>& value) = 0;
  virtual std::vector<char> get(const std::string& key) = 0;
  virtual void wait(const std::vector<std::string>& keys) = 0;
  virtual void wait(
      const std::vector<std::string>& keys,
      const std::chrono::milliseconds& timeout) = 0;
};
} // namespace rendezvous
} // namespace gloo
