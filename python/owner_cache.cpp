#include "owner_cache.h"

#include <torch/library.h>

#include <mutex>
#include <unordered_map>

#include "args.h"
#include "csrc/cpu/blocks.h"
#include "csrc/modes.h"

namespace maskops {

at::Tensor pack_visible(const at::Tensor& owner, int64_t task) {
  TORCH_CHECK_TYPE(owner.scalar_type() == at::kByte, "owner must be a torch.uint8 tensor, got ",
                   owner.scalar_type());
  TORCH_CHECK_VALUE(owner.dim() == 2, "owner must be 2-D, got shape ", owner.sizes());
  TORCH_CHECK_VALUE(task >= 1 && task <= kMaxTask, "task must be in 1..", kMaxTask, ", got ", task);
  const int64_t n = owner.size(0), k = owner.size(1);
  if (n == 0 || k == 0) return at::zeros({n, (k + 31) / 32}, owner.options().dtype(at::kInt));
  const at::Tensor visible = (owner > 0).logical_and_(owner <= task).to(at::kLong);
  const at::Tensor bits = at::constant_pad_nd(visible, {0, (32 - k % 32) % 32}).view({n, -1, 32});
  const at::Tensor words =
      bits.bitwise_left_shift(at::arange(32, owner.options().dtype(at::kLong))).sum(-1);
  // Words above 2^31 - 1 wrap to the int32 with the same bits.
  return (words - words.ge(int64_t(1) << 31).to(at::kLong) * (int64_t(1) << 32)).to(at::kInt);
}

namespace {

// What is derived from one owner map, per task: 1-bit maps (in the owner's memory order) and
// block maps.
enum class Derived : int64_t { bits = 0, blocks = 1, channels_last_bits = 2 };
constexpr int64_t kDerived = 3;

struct Entry {
  c10::weak_intrusive_ptr<c10::TensorImpl> owner{c10::intrusive_ptr<c10::TensorImpl>()};
  uint32_t version = 0;
  std::unordered_map<int64_t, at::Tensor> derived;  // by kDerived * task + Derived
};

std::mutex mutex;
std::unordered_map<const c10::TensorImpl*, Entry> cache;

// Entries of owners that no longer exist, dropped now and then.
void forget_dead_owners() {
  for (auto it = cache.begin(); it != cache.end();)
    it = it->second.owner.expired() ? cache.erase(it) : std::next(it);
}

at::Tensor visible_blocks(const at::Tensor& owner, int64_t task) {
  TORCH_CHECK(owner.dim() >= 1 && owner.is_cpu() && owner.is_contiguous() &&
                  owner.scalar_type() == at::kByte,
              "visible_blocks needs a contiguous uint8 CPU owner");  // (out, in, kh, kw) order
  const int64_t n = owner.size(0), k = n ? owner.numel() / n : 0;
  at::Tensor out = at::empty({cpu::block_grid(n, cpu::kBlockRows), cpu::block_grid(k, cpu::kBlockCols)},
                             owner.options());
  cpu::visible_blocks(owner.data_ptr<uint8_t>(), n, k, unsigned(task), out.data_ptr<uint8_t>());
  return out;
}

template <class Build>
at::Tensor cached(const at::Tensor& owner, int64_t task, Derived kind, Build&& build) {
  if (owner.is_inference()) return build();  // no version counter to watch
  const c10::TensorImpl* key = owner.unsafeGetTensorImpl();
  const uint32_t version = owner._version();
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() > 256) forget_dead_owners();
  Entry& entry = cache[key];
  const auto alive = entry.owner.lock();
  if (alive.get() != key || entry.version != version) {
    entry = Entry{c10::weak_intrusive_ptr<c10::TensorImpl>(owner.getIntrusivePtr()), version, {}};
  }
  const int64_t slot = kDerived * task + int64_t(kind);
  auto it = entry.derived.find(slot);
  if (it == entry.derived.end()) it = entry.derived.emplace(slot, build()).first;
  return it->second;
}

}  // namespace

at::Tensor cached_visible_bits(const at::Tensor& owner, int64_t task) {
  const bool channels_last = channels_last_only(owner);
  return cached(owner, task, channels_last ? Derived::channels_last_bits : Derived::bits, [&] {
    // Rows of (out, kh, kw, in) for a channels_last owner: a view, in memory order.
    const at::Tensor rows = channels_last ? owner.permute({0, 2, 3, 1}) : owner;
    return pack_visible(rows.dim() == 2 ? rows : rows.reshape({rows.size(0), -1}), task);
  });
}

at::Tensor cached_visible_blocks(const at::Tensor& owner, int64_t task) {
  return cached(owner, task, Derived::blocks, [&] { return visible_blocks(owner.contiguous(), task); });
}

TORCH_LIBRARY_IMPL(maskops, CompositeExplicitAutograd, m) {
  m.impl("pack_visible", &pack_visible);
}

}  // namespace maskops
