// Per-thread device streams for ferroserve's TorchScript workers, which tch (the Rust binding of libtorch) has
// no API for. Only c10's device-generic interface is used (DeviceGuardImplInterface, Stream), so this compiles
// against the libtorch headers alone, without the CUDA toolkit; the CUDA implementation behind it is registered
// by libtorch_cuda when that library is loaded, and an error says so when it is not.
//
// Every function returns 0 on success, or -1 after writing a NUL-terminated message of at most `len` bytes into
// `err`: no C++ exception crosses into Rust.

#include <c10/core/Device.h>
#include <c10/core/DeviceType.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cstdint>
#include <cstdio>
#include <exception>

namespace {

int fail(char* err, size_t len, const char* message) {
  if (err != nullptr && len > 0) {
    std::snprintf(err, len, "%s", message);
  }
  return -1;
}

const c10::impl::DeviceGuardImplInterface* cuda_impl() {
  if (!c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA)) {
    return nullptr;
  }
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
}

const char* const NO_CUDA = "libtorch has no CUDA support loaded (libtorch_cuda is not loaded)";

}  // namespace

extern "C" {

// Takes a stream from libtorch's pool for CUDA device `index` (the pool hands out its streams round-robin) and
// writes its id and native handle (a cudaStream_t). With `make_current`, the stream becomes the calling thread's
// current stream on that device, so that every kernel and copy the thread launches there goes to it.
int ferroserve_cuda_pool_stream(int index, int make_current, int64_t* id, void** handle, char* err, size_t len) {
  try {
    const auto* impl = cuda_impl();
    if (impl == nullptr) {
      return fail(err, len, NO_CUDA);
    }
    const c10::Device device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
    const c10::Stream stream = impl->getStreamFromGlobalPool(device, /*isHighPriority=*/false);
    if (make_current != 0) {
      impl->exchangeStream(stream);
    }
    *id = stream.id();
    *handle = stream.native_handle();
    return 0;
  } catch (const std::exception& e) {
    return fail(err, len, e.what());
  }
}

// The id of the calling thread's current stream on CUDA device `index`.
int ferroserve_cuda_stream_current(int index, int64_t* id, char* err, size_t len) {
  try {
    const auto* impl = cuda_impl();
    if (impl == nullptr) {
      return fail(err, len, NO_CUDA);
    }
    *id = impl->getStream(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index))).id();
    return 0;
  } catch (const std::exception& e) {
    return fail(err, len, e.what());
  }
}

}  // extern "C"
