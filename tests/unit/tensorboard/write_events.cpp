// Writes the scalars that read_events.py expects into a fresh event file in argv[1]
// and prints the file's path. Keep the two files in step.
#include <cmath>
#include <cstdio>
#include <exception>
#include <limits>

#include "kumiko/core/tensorboard.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <folder>\n", argv[0]);
    return 2;
  }
  try {
    kumiko::tensorboard::EventWriter writer(argv[1]);
    constexpr double kWallTime0 = 1700000000.25;  // exact in a double; read back bit for bit
    // Steps only grow, as in training: TensorBoard drops earlier data when a step
    // goes backwards (it takes that for a restart).
    for (int step = 0; step < 10; ++step) {
      writer.scalar("train/loss", step, 10.0 / (step + 1), kWallTime0 + step);
      writer.scalar("train/lr", step, 1e-3 * step, kWallTime0 + step);
      writer.flush();
    }
    constexpr double kInf = std::numeric_limits<double>::infinity();
    writer.scalar("edge", 100, std::nan(""), kWallTime0 + 100);
    writer.scalar("edge", 101, kInf, kWallTime0 + 101);
    writer.scalar("edge", 102, -kInf, kWallTime0 + 102);
    writer.scalar("edge", 103, -0.5, kWallTime0 + 103);
    writer.scalar("edge", int64_t{1} << 40, 7.0, kWallTime0 + 104);
    std::printf("%s\n", writer.path().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
