// Activation sets a pipeline rank needs: 1f1b keeps pp - rank micro-batches in
// flight, gpipe all of them; reusing set mb % slots never overwrites a live one.
#include <gtest/gtest.h>

#include "kumiko/parallel/pipeline.h"

namespace kumiko::parallel {
namespace {

TEST(ActivationSlots, OneFOneBNeedsPpMinusRank) {
  for (int pp = 2; pp <= 4; ++pp)
    for (int m = pp; m <= 8; ++m)
      for (int r = 0; r < pp; ++r)
        EXPECT_EQ(activation_slots(build_schedule(ScheduleKind::one_f_one_b, pp, r, m), m, 1), pp - r)
            << "pp " << pp << " m " << m << " rank " << r;
}

TEST(ActivationSlots, GpipeNeedsEveryMicroBatch) {
  for (int m = 1; m <= 6; ++m) EXPECT_EQ(activation_slots(build_schedule(ScheduleKind::gpipe, 2, 0, m), m, 1), m);
}

TEST(ActivationSlots, InterleavedNeverMoreThanTheMicroBatches) {
  for (int m : {2, 4, 8}) {
    const int slots = activation_slots(build_schedule(ScheduleKind::interleaved, 2, 0, m, 2), m, 2);
    EXPECT_GE(slots, 1);
    EXPECT_LE(slots, m);
  }
}

}  // namespace
}  // namespace kumiko::parallel
