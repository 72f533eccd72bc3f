// Samples of a mixed-task batch sorted by task (the routing of a batch), and the groups of
// rows the kernels run with one selection each.
#pragma once

#include <cstdint>
#include <vector>

#include "../modes.h"

namespace maskops::cpu {

// Stable counting sort of `samples` task ids (each in 1..kMaxTask; std::invalid_argument
// otherwise): order[i] is the sample at sorted position i, and the samples of task t are
// order[offsets[t] .. offsets[t + 1]).  offsets has kTaskIds + 1 entries.
void sort_by_task(const int32_t* task, int64_t samples, int64_t* order, int64_t* offsets);

struct TaskGroup {
  unsigned task;
  int64_t begin, end;  // positions in the grouped order
  int64_t size() const { return end - begin; }
};

struct TaskGroups {
  std::vector<TaskGroup> groups;
  std::vector<int64_t> order;  // order[i]: original row at grouped position i; empty: identity
  bool reordered() const { return !order.empty(); }
  int64_t row(int64_t i) const { return reordered() ? order[i] : i; }
};

// All `rows` rows with one task.
TaskGroups single_task(unsigned task, int64_t rows);

// Groups of rows from a routing (sort_by_task's order and offsets) where each sample has
// `rows_per_sample` consecutive rows.  One task present: no reordering.  Throws
// std::invalid_argument if order and offsets are not a routing of `samples` samples.
TaskGroups group_rows(const int64_t* order, const int64_t* offsets, int64_t samples,
                      int64_t rows_per_sample);

// dst[i, :] = src[order[i], :] for i < order.size(); rows of `cols` elements.
template <class T>
void gather_rows(const T* src, int64_t lds, const std::vector<int64_t>& order, int64_t cols,
                 T* dst, int64_t ldd);

}  // namespace maskops::cpu
