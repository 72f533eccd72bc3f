#include "blocks.h"

#include <algorithm>
#include <cstring>

namespace maskops::cpu {

void visible_blocks(const uint8_t* owner, int64_t N, int64_t K, unsigned task, uint8_t* visible) {
  const int64_t rows = block_grid(N, kBlockRows), cols = block_grid(K, kBlockCols);
  for (int64_t br = 0; br < rows; ++br)
    for (int64_t bc = 0; bc < cols; ++bc) {
      const int64_t n_end = std::min(N, (br + 1) * kBlockRows), k_end = std::min(K, (bc + 1) * kBlockCols);
      bool any = false, all = true;
      for (int64_t n = br * kBlockRows; n < n_end; ++n)
        for (int64_t k = bc * kBlockCols; k < k_end; ++k) {
          const bool seen = unsigned(owner[n * K + k]) - 1u < task;  // owner 0 wraps around
          any |= seen;
          all &= seen;
        }
      visible[br * cols + bc] = all ? kFull : any ? kPartial : kHidden;
    }
}

std::vector<KRange> visible_ranges(const uint8_t* block_row, int64_t K) {
  std::vector<KRange> ranges;
  const int64_t cols = block_grid(K, kBlockCols);
  for (int64_t bc = 0; bc < cols; ++bc) {
    if (block_row[bc] == kHidden) continue;
    const bool full = block_row[bc] == kFull;
    const int64_t begin = bc * kBlockCols, end = std::min(K, begin + kBlockCols);
    if (!ranges.empty() && ranges.back().end == begin && ranges.back().full == full)
      ranges.back().end = end;
    else
      ranges.push_back({begin, end, full});
  }
  return ranges;
}

}  // namespace maskops::cpu
