// Pipeline-parallel configuration errors: stages that do not divide the layers,
// pp_layers that do not describe them, interleaving without chunks or with a
// micro-batch count that is not a multiple of pp, an unknown schedule.
#include <gtest/gtest.h>

#include "config_test_util.h"

namespace kumiko::config {
namespace {

using testing::validation_error;

Config pipeline(int pp) {
  Config c;
  c.parallel.pp = pp;
  c.train.global_batch = 8;
  c.train.micro_batch = 1;
  return c;
}

TEST(PipelineConfig, LayersMustDivideIntoStages) {
  Config c = pipeline(3);  // 4 layers over 3 stages
  EXPECT_EQ(validation_error(c),
            "model.n_layers: expected a multiple of parallel.pp x parallel.pp_chunks = 3 (or set "
            "parallel.pp_layers), got 4");
  c.parallel.pp_layers = "2,1,1";
  EXPECT_EQ(validation_error(c), "");
}

TEST(PipelineConfig, PpLayersMustSumToTheLayers) {
  Config c = pipeline(2);
  c.parallel.pp_layers = "3,3";
  EXPECT_EQ(validation_error(c),
            "parallel.pp_layers: expected 2 positive layer counts (parallel.pp x parallel.pp_chunks) summing "
            "to model.n_layers = 4, got '3,3'");
  c.parallel.pp_layers = "4";
  EXPECT_NE(validation_error(c).find("parallel.pp_layers"), std::string::npos);
  c.parallel.pp_layers = "4,0";
  EXPECT_NE(validation_error(c).find("parallel.pp_layers"), std::string::npos);
  c.parallel.pp_layers = "2,x";
  EXPECT_NE(validation_error(c).find("parallel.pp_layers"), std::string::npos);
  c.parallel.pp_layers = "3,1";
  EXPECT_EQ(validation_error(c), "");
}

TEST(PipelineConfig, InterleavingNeedsChunksAndWholeRounds) {
  Config c = pipeline(2);
  c.parallel.pp_schedule = "interleaved";
  EXPECT_EQ(validation_error(c),
            "parallel.pp_chunks: expected >= 2 with parallel.pp_schedule = interleaved, got 1");
  c.parallel.pp_chunks = 2;
  EXPECT_EQ(validation_error(c), "");
  c.train.micro_batch = 2;
  c.train.global_batch = 6;  // 3 micro-batches, not a multiple of pp = 2
  EXPECT_NE(validation_error(c).find("interleaved needs the micro-batches per step"), std::string::npos)
      << validation_error(c);
  Config g = pipeline(2);
  g.parallel.pp_chunks = 2;  // chunks without interleaving
  EXPECT_EQ(validation_error(g), "parallel.pp_chunks: expected 1 unless parallel.pp_schedule = interleaved, got 2");
}

}  // namespace
}  // namespace kumiko::config
