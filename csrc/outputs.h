// Output allocation shared by the CPU kernels.
#pragma once

#include <ATen/ATen.h>

namespace fastmma {

// A fresh uninitialised tensor, backed by huge pages where Linux allows; NaN-filled when poisoning is on.
at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// Tests: fill every output the kernels allocate with NaN first, so an element they forget to write shows.
void set_poison_outputs(bool enabled);

}  // namespace fastmma
