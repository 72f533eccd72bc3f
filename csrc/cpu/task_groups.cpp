#include "task_groups.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "parallel.h"

namespace maskops::cpu {

void sort_by_task(const int32_t* task, int64_t samples, int64_t* order, int64_t* offsets) {
  std::memset(offsets, 0, sizeof(int64_t) * (kTaskIds + 1));
  for (int64_t i = 0; i < samples; ++i) {
    const int32_t t = task[i];
    if (t < 1 || t > kMaxTask)
      throw std::invalid_argument("task " + std::to_string(t) + " is outside 1.." +
                                  std::to_string(kMaxTask));
    ++offsets[t + 1];
  }
  for (int t = 1; t <= kTaskIds; ++t) offsets[t] += offsets[t - 1];
  std::vector<int64_t> next(offsets, offsets + kTaskIds);
  for (int64_t i = 0; i < samples; ++i) order[next[task[i]]++] = i;
}

TaskGroups single_task(unsigned task, int64_t rows) {
  TaskGroups out;
  out.groups.push_back({task, 0, rows});
  return out;
}

TaskGroups group_rows(const int64_t* order, const int64_t* offsets, int64_t samples,
                      int64_t rows_per_sample) {
  auto fail = [](const char* what) {
    throw std::invalid_argument(std::string("not a routing of this batch: ") + what);
  };
  if (offsets[0] != 0 || offsets[1] != 0 || offsets[kTaskIds] != samples)
    fail("offsets must start at 0, give task 0 no samples and end at the batch size");
  TaskGroups out;
  for (int t = 1; t < kTaskIds; ++t) {
    if (offsets[t + 1] < offsets[t]) fail("offsets must not decrease");
    if (offsets[t + 1] > offsets[t])
      out.groups.push_back({unsigned(t), offsets[t] * rows_per_sample,
                            offsets[t + 1] * rows_per_sample});
  }
  for (int64_t i = 0; i < samples; ++i)
    if (order[i] < 0 || order[i] >= samples) fail("order holds a sample outside the batch");
  if (out.groups.size() <= 1) {
    if (out.groups.empty()) out.groups.push_back({1u, 0, 0});
    return out;
  }
  // Samples already sorted by task (a server that sorts its batch once): every group is a
  // run in place, and no kernel need gather or scatter rows.
  bool sorted = true;
  for (int64_t i = 0; i < samples && sorted; ++i) sorted = order[i] == i;
  if (sorted) return out;
  out.order.resize(samples * rows_per_sample);
  for (int64_t i = 0; i < samples; ++i)
    for (int64_t r = 0; r < rows_per_sample; ++r)
      out.order[i * rows_per_sample + r] = order[i] * rows_per_sample + r;
  return out;
}

template <class T>
void gather_rows(const T* src, int64_t lds, const std::vector<int64_t>& order, int64_t cols,
                 T* dst, int64_t ldd) {
  const int64_t rows = int64_t(order.size());
  parallel_for(rows, threads_above(rows * cols, 1 << 16), Schedule::even, [&](int64_t i) {
    std::memcpy(dst + i * ldd, src + order[i] * lds, sizeof(T) * cols);
  });
}

template void gather_rows<float>(const float*, int64_t, const std::vector<int64_t>&, int64_t,
                                 float*, int64_t);
template void gather_rows<double>(const double*, int64_t, const std::vector<int64_t>&, int64_t,
                                  double*, int64_t);

}  // namespace maskops::cpu
