// ATen entry points of the fused RMSNorm + MMA adapter: input checks, allocation, threading.
// The row math is in norm_adapter_kernels.h.
#include "norm_adapter.h"

#include <algorithm>
#include <limits>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "norm_adapter_kernels.h"
#include "outputs.h"

namespace fastmma {
namespace {

constexpr int64_t kForwardGrainRows = 16;

using kernels::Shape;

at::ScalarType accumulation_dtype(at::ScalarType x_dtype) {
  return x_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

void check_x(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), "rms_norm_adapter (cpp backend): ", name, " is on ", x.device(),
              "; this backend runs on CPU tensors only (move the model to CPU or use FASTMMA_BACKEND=auto)");
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf || dtype == at::kDouble,
              "rms_norm_adapter (cpp backend): ", name, " has dtype ", dtype,
              "; supported are float32, bfloat16, float16 and float64 (cast the model to one of them)");
  TORCH_CHECK(x.dim() == 2 && x.size(1) > 0, "rms_norm_adapter (cpp backend): ", name,
              " must be 2-D [rows, hidden] with hidden > 0; got shape ", x.sizes());
}

void check_operand(const at::Tensor& tensor, const char* name, at::IntArrayRef expected_shape,
                   at::ScalarType expected_dtype) {
  TORCH_CHECK(tensor.device().is_cpu(), "rms_norm_adapter (cpp backend): ", name, " is on ", tensor.device(),
              "; every input must be on the CPU like x");
  TORCH_CHECK(tensor.scalar_type() == expected_dtype, "rms_norm_adapter (cpp backend): ", name, " has dtype ",
              tensor.scalar_type(), "; expected ", expected_dtype, " (convert it with .to(", expected_dtype, "))");
  TORCH_CHECK(tensor.sizes() == expected_shape, "rms_norm_adapter (cpp backend): ", name, " has shape ",
              tensor.sizes(), "; expected ", expected_shape);
}

// Checks the operands both passes read against x and up_table and returns the problem's sizes.
Shape check_operands(const at::Tensor& x, const at::Tensor& norm_weight, const at::Tensor& down_weight,
                     const at::Tensor& up_table, const at::Tensor& table_index,
                     const std::optional<at::Tensor>& h_mask) {
  check_x(x, "x");
  const auto acc = accumulation_dtype(x.scalar_type());
  TORCH_CHECK(up_table.dim() == 3, "rms_norm_adapter (cpp backend): up_table must be 3-D [tables, rank/groups, "
              "hidden]; got shape ", up_table.sizes());
  TORCH_CHECK(down_weight.dim() == 2, "rms_norm_adapter (cpp backend): down_weight must be 2-D [rank, hidden]; "
              "got shape ", down_weight.sizes());
  Shape shape{};
  shape.rows = x.size(0);
  shape.hidden = x.size(1);
  shape.rank = down_weight.size(0);
  shape.tables = up_table.size(0);
  shape.rank_per_group = up_table.size(1);
  TORCH_CHECK(shape.rank_per_group > 0 && shape.rank % shape.rank_per_group == 0,
              "rms_norm_adapter (cpp backend): up_table's rank/groups (", shape.rank_per_group,
              ") must divide the rank (", shape.rank, ")");
  shape.groups = shape.rank / shape.rank_per_group;
  TORCH_CHECK(shape.hidden % shape.groups == 0, "rms_norm_adapter (cpp backend): hidden size ", shape.hidden,
              " is not divisible by the number of groups ", shape.groups);
  check_operand(norm_weight, "norm_weight", {shape.hidden}, acc);
  check_operand(down_weight, "down_weight", {shape.rank, shape.hidden}, acc);
  check_operand(up_table, "up_table", {shape.tables, shape.rank_per_group, shape.hidden}, acc);
  check_operand(table_index, "table_index", {shape.rows}, at::kLong);
  if (h_mask.has_value()) {
    check_operand(*h_mask, "h_mask", {shape.rows, shape.rank}, acc);
  }
  return shape;
}

void check_table_index(const at::Tensor& table_index, int64_t tables) {
  const int64_t* index = table_index.data_ptr<int64_t>();
  for (int64_t row = 0; row < table_index.numel(); ++row) {
    TORCH_CHECK(index[row] >= 0 && index[row] < tables, "rms_norm_adapter (cpp backend): row ", row,
                " selects table ", index[row], " but there are ", tables,
                " (expert ids must lie in [0, experts); router weights need one row per sample)");
  }
}

template <typename T>
const T* data_or_null(const at::Tensor& tensor) {
  return tensor.defined() ? tensor.const_data_ptr<T>() : nullptr;
}

// down_bias and bias_table may be undefined: the backward pass does not read them.
template <typename scalar_t, typename acc_t>
kernels::Operands<scalar_t, acc_t> operands(const Shape& shape, const at::Tensor& x, const at::Tensor& norm_weight,
                                            const at::Tensor& down_weight, const at::Tensor& down_bias,
                                            const at::Tensor& up_table, const at::Tensor& bias_table,
                                            const at::Tensor& table_index, const std::optional<at::Tensor>& h_mask) {
  return {shape,
          x.const_data_ptr<scalar_t>(),
          norm_weight.const_data_ptr<acc_t>(),
          down_weight.const_data_ptr<acc_t>(),
          data_or_null<acc_t>(down_bias),
          up_table.const_data_ptr<acc_t>(),
          data_or_null<acc_t>(bias_table),
          table_index.const_data_ptr<int64_t>(),
          h_mask.has_value() ? h_mask->const_data_ptr<acc_t>() : nullptr};
}

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& tensor) {
  if (!tensor.has_value()) {
    return std::nullopt;
  }
  return tensor->contiguous();
}

// Row ranges of the backward pass: one per thread, in multiples of the kernel's tile.
struct Chunks {
  int64_t count;
  int64_t rows_each;
};

Chunks backward_chunks(int64_t rows) {
  const int64_t tiles = std::max<int64_t>(1, at::divup(rows, kernels::kBackwardTileRows));
  const int64_t count = std::min<int64_t>(std::max(1, at::get_num_threads()), tiles);
  const int64_t rows_each = at::divup(tiles, count) * kernels::kBackwardTileRows;
  return {at::divup(std::max<int64_t>(rows, 1), rows_each), rows_each};
}

// One partial-sum buffer per chunk (each chunk zeroes its own), or undefined when the gradient is not needed.
at::Tensor partial_sums(bool needed, int64_t chunks, at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (!needed) {
    return at::Tensor();
  }
  std::vector<int64_t> with_chunks{chunks};
  with_chunks.insert(with_chunks.end(), sizes.begin(), sizes.end());
  return at::empty(with_chunks, options);
}

// The chunk's slice of `partials`, zeroed by the thread that will fill it.
template <typename acc_t>
acc_t* zeroed_slice(const at::Tensor& partials, int64_t chunk) {
  if (!partials.defined()) {
    return nullptr;
  }
  const int64_t elements = partials.numel() / partials.size(0);
  acc_t* slice = partials.data_ptr<acc_t>() + chunk * elements;
  std::fill(slice, slice + elements, acc_t(0));
  return slice;
}

// The sum over chunks, in chunk order for every element (deterministic for a given thread count).
// Serial: the partials are small, and another parallel region costs more than it saves.
template <typename acc_t>
at::Tensor sum_chunks(const at::Tensor& partials) {
  if (!partials.defined() || partials.size(0) == 1) {
    return partials.defined() ? partials[0] : at::Tensor();
  }
  const int64_t chunks = partials.size(0);
  const int64_t elements = partials.numel() / chunks;
  at::Tensor total = new_output(partials.sizes().slice(1), partials.options());
  const acc_t* source = partials.const_data_ptr<acc_t>();
  acc_t* target = total.data_ptr<acc_t>();
  std::copy(source, source + elements, target);
  for (int64_t chunk = 1; chunk < chunks; ++chunk) {
    for (int64_t k = 0; k < elements; ++k) {
      target[k] += source[chunk * elements + k];
    }
  }
  return total;
}

// The backward pass's per-chunk partial sums, [chunks, ...] each; undefined where not asked for.
struct PartialSums {
  PartialSums(const Shape& shape, int64_t chunks, bool norm_weight_needed, bool down_needed, bool tables_needed,
              const at::TensorOptions& options)
      : norm_weight(partial_sums(norm_weight_needed, chunks, {shape.hidden}, options)),
        down_weight(partial_sums(down_needed, chunks, {shape.rank, shape.hidden}, options)),
        down_bias(partial_sums(down_needed, chunks, {shape.rank}, options)),
        up_table(partial_sums(tables_needed, chunks, {shape.tables, shape.rank_per_group, shape.hidden}, options)),
        bias_table(partial_sums(tables_needed, chunks, {shape.tables, shape.hidden}, options)) {}

  template <typename acc_t>
  kernels::Partials<acc_t> zeroed_slices(int64_t chunk) const {
    return {zeroed_slice<acc_t>(norm_weight, chunk), zeroed_slice<acc_t>(down_weight, chunk),
            zeroed_slice<acc_t>(down_bias, chunk), zeroed_slice<acc_t>(up_table, chunk),
            zeroed_slice<acc_t>(bias_table, chunk)};
  }

  // {grad_norm_weight, grad_down_weight, grad_down_bias, grad_up_table, grad_bias_table}
  template <typename acc_t>
  std::vector<at::Tensor> totals() const {
    return {sum_chunks<acc_t>(norm_weight), sum_chunks<acc_t>(down_weight), sum_chunks<acc_t>(down_bias),
            sum_chunks<acc_t>(up_table), sum_chunks<acc_t>(bias_table)};
  }

  at::Tensor norm_weight, down_weight, down_bias, up_table, bias_table;
};

// Runs the backward kernel over every chunk, then sums the chunks' partials.
template <typename scalar_t, typename acc_t>
std::vector<at::Tensor> backward_chunks_and_sum(const kernels::Operands<scalar_t, acc_t>& in,
                                                const kernels::BackwardInputs<scalar_t, acc_t>& bw,
                                                const Chunks& chunks, const PartialSums& partials) {
  at::parallel_for(0, chunks.count, 1, [&](int64_t first_chunk, int64_t last_chunk) {
    for (int64_t chunk = first_chunk; chunk < last_chunk; ++chunk) {
      const int64_t begin = chunk * chunks.rows_each;
      kernels::backward_rows(in, bw, partials.zeroed_slices<acc_t>(chunk), begin,
                             std::min(in.shape.rows, begin + chunks.rows_each));
    }
  });
  return partials.totals<acc_t>();
}

}  // namespace


std::vector<at::Tensor> rms_norm_adapter_forward(const at::Tensor& x_in, const at::Tensor& norm_weight_in,
                                                 double eps, const at::Tensor& down_weight_in,
                                                 const at::Tensor& down_bias_in, const at::Tensor& up_table_in,
                                                 const at::Tensor& bias_table_in, const at::Tensor& table_index_in,
                                                 const std::optional<at::Tensor>& h_mask_in) {
  const at::Tensor x = x_in.contiguous(), norm_weight = norm_weight_in.contiguous();
  const at::Tensor down_weight = down_weight_in.contiguous(), down_bias = down_bias_in.contiguous();
  const at::Tensor up_table = up_table_in.contiguous(), bias_table = bias_table_in.contiguous();
  const at::Tensor table_index = table_index_in.contiguous();
  const std::optional<at::Tensor> h_mask = contiguous(h_mask_in);
  const Shape shape = check_operands(x, norm_weight, down_weight, up_table, table_index, h_mask);
  const auto acc = accumulation_dtype(x.scalar_type());
  check_operand(down_bias, "down_bias", {shape.rank}, acc);
  check_operand(bias_table, "bias_table", {shape.tables, shape.hidden}, acc);
  check_table_index(table_index, shape.tables);

  const auto acc_options = x.options().dtype(acc);
  at::Tensor y = new_output({shape.rows, shape.hidden}, x.options());  // [M, D]
  at::Tensor rstd = new_output({shape.rows}, acc_options);              // [M]
  at::Tensor h = new_output({shape.rows, shape.rank}, acc_options);     // [M, r]
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm_adapter_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto in = operands<scalar_t, acc_t>(shape, x, norm_weight, down_weight, down_bias, up_table, bias_table,
                                              table_index, h_mask);
    const kernels::ForwardOutputs<scalar_t, acc_t> out{y.data_ptr<scalar_t>(), rstd.data_ptr<acc_t>(),
                                                       h.data_ptr<acc_t>()};
    at::parallel_for(0, shape.rows, kForwardGrainRows, [&](int64_t begin, int64_t end) {
      kernels::forward_rows(in, static_cast<acc_t>(eps), out, begin, end);
    });
  });
  return {y, rstd, h};
}

std::vector<at::Tensor> rms_norm_adapter_backward(const at::Tensor& grad_y_in, const at::Tensor& x_in,
                                                  const at::Tensor& norm_weight_in, const at::Tensor& rstd_in,
                                                  const at::Tensor& h_in, const std::optional<at::Tensor>& h_mask_in,
                                                  const at::Tensor& down_weight_in, const at::Tensor& up_table_in,
                                                  const at::Tensor& table_index_in, bool need_grad_x,
                                                  bool need_grad_norm_weight, bool need_grad_down,
                                                  bool need_grad_tables) {
  const at::Tensor x = x_in.contiguous(), norm_weight = norm_weight_in.contiguous();
  const at::Tensor down_weight = down_weight_in.contiguous(), up_table = up_table_in.contiguous();
  const at::Tensor table_index = table_index_in.contiguous();
  const std::optional<at::Tensor> h_mask = contiguous(h_mask_in);
  const at::Tensor rstd = rstd_in.contiguous(), h = h_in.contiguous();
  const Shape shape = check_operands(x, norm_weight, down_weight, up_table, table_index, h_mask);
  const auto acc = accumulation_dtype(x.scalar_type());
  check_operand(grad_y_in, "grad_y", {shape.rows, shape.hidden}, x.scalar_type());
  check_operand(rstd, "rstd", {shape.rows}, acc);
  check_operand(h, "h", {shape.rows, shape.rank}, acc);
  const at::Tensor grad_y = grad_y_in.contiguous();

  const Chunks chunks = backward_chunks(shape.rows);
  at::Tensor grad_x = need_grad_x ? new_output({shape.rows, shape.hidden}, x.options()) : at::Tensor();
  const PartialSums partials(shape, chunks.count, need_grad_norm_weight, need_grad_down, need_grad_tables,
                             x.options().dtype(acc));
  std::vector<at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm_adapter_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto in = operands<scalar_t, acc_t>(shape, x, norm_weight, down_weight, at::Tensor(), up_table,
                                              at::Tensor(), table_index, h_mask);
    const kernels::BackwardInputs<scalar_t, acc_t> bw{
        grad_y.const_data_ptr<scalar_t>(), rstd.const_data_ptr<acc_t>(), h.const_data_ptr<acc_t>(),
        need_grad_x ? grad_x.data_ptr<scalar_t>() : nullptr, need_grad_x || need_grad_norm_weight};
    grads = backward_chunks_and_sum(in, bw, chunks, partials);
  });
  grads.insert(grads.begin(), grad_x);
  return grads;
}

}  // namespace fastmma
