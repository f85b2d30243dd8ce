// Output allocation shared by the CPU kernels (see outputs.h).
#include "outputs.h"

#include <atomic>
#include <cstdint>
#include <limits>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastmma {
namespace {

std::atomic<bool> poison_outputs{false};

// Ask Linux to back a fresh output with 2 MiB pages before anything touches it: a 32 MiB output
// then costs 16 page faults instead of 8192, which would take longer than the kernel itself.
void advise_huge_pages(const at::Tensor& tensor) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  const auto begin = reinterpret_cast<uintptr_t>(tensor.data_ptr());
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + tensor.nbytes()) & ~(kHugePage - 1);
  if (last > first) {
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // a hint: failure changes nothing
  }
#endif
}

}  // namespace

at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor output = at::empty(sizes, options);
  advise_huge_pages(output);
  if (poison_outputs.load()) {
    output.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return output;
}

void set_poison_outputs(bool enabled) { poison_outputs.store(enabled); }

}  // namespace fastmma
