// maskops.route: per-sample task ids validated once and sorted by task (a Routing, args.h),
// so that every layer of a forward reuses them and no op reads task ids on the host.
#include <ATen/ATen.h>

#include <algorithm>
#include <tuple>

#include "args.h"
#include "csrc/cpu/task_groups.h"
#include "routing.h"

namespace maskops {

std::tuple<Tensor, Tensor, Tensor> route(const Tensor& task, std::optional<at::Device> device) {
  TORCH_CHECK_TYPE(at::isIntegralType(task.scalar_type(), /*includeBool=*/false),
                   "task tensor must have an integer dtype, got ", task.scalar_type());
  TORCH_CHECK_VALUE(task.dim() == 1, "task tensor must have shape (batch,), got ", task.sizes());
  const at::Device target = device.value_or(task.device());
  // The one read of the task ids on the host (a device copy when they live on a GPU).
  const Tensor ids = task.to(at::kCPU, at::kLong).contiguous();
  const int64_t samples = ids.numel();
  if (samples) {
    const int64_t* id = ids.data_ptr<int64_t>();
    const auto [lo, hi] = std::minmax_element(id, id + samples);
    TORCH_CHECK_VALUE(*lo >= 1 && *hi <= kMaxTask, "task values must be in 1..", kMaxTask,
                      ", got values in ", *lo, "..", *hi);
  }
  const Tensor task32 = ids.to(at::kInt);
  Tensor order = at::empty({samples}, ids.options());
  Tensor offsets = at::empty({kTaskIds + 1}, ids.options());
  cpu::sort_by_task(task32.data_ptr<int32_t>(), samples, order.data_ptr<int64_t>(),
                    offsets.data_ptr<int64_t>());
  return {task32.to(target), order.to(target), offsets};
}

}  // namespace maskops
