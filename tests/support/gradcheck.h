#pragma once
// The one judge of finite-difference gradient checks (tests/grad/*): whether a
// central difference and an analytic gradient agree, with a tolerance derived from
// the error of the central difference itself, not from one machine's rounding.
//
// For a loss f evaluated in double, the central difference
//   num = (f(w + h) - f(w - h)) / (2h)
// differs from the true derivative g by
//   truncation  h^2/6 |f'''|                        (Taylor remainder)
//   round-off   (|df(w+h)| + |df(w-h)|) / (2h)       (df: the evaluation's own error)
// The evaluation error is bounded by a number of units of round-off u = 2^-53 of the
// magnitude S of the terms the loss sums (S = |loss| for a mean of positive token
// losses; sum |out * r| for the ops' weighted sums). A forward pass of a few dozen
// dependent ops accumulates a few u per op relative to its own output, and a sum of
// n terms about sqrt(n) u S of random rounding (n u S at worst); kRoundoffUlps = 100
// covers that, and kThirdDerivative = 10 the third derivative of these small,
// O(1)-scaled problems. So
//   atol = 100 u S / h + 10 h^2
// (model check: h = 1e-5, loss about 4: 4.4e-9 + 1e-9). Measured on every OpenBLAS
// kernel family: the largest discrepancy used 1.8 % of the allowed difference in the
// model check and 2.5 % in the ops' checks; the round-off seen on a true-zero gradient
// (GPT-2's key bias) on a Sapphire Rapids machine was 2.2e-11. The analytic
// gradient's own round-off is far below that. Agreement is
//   |num - ana| <= rtol * max(|num|, |ana|) + atol,   rtol = 1e-6,
// so a gradient that is structurally zero (a key bias: softmax is shift-invariant per
// query) is judged only by atol, and any other by its own scale. The rule still
// catches a gradient off by 0.1 % (1e-3 relative) wherever |g| > atol / 1e-3.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace kumiko::test {

struct GradTolerance {
  double rtol = 1e-6;
  double atol = 0;
};

inline GradTolerance fd_tolerance(double loss_scale, double h) {
  constexpr double kUnitRoundoff = std::numeric_limits<double>::epsilon() / 2;
  constexpr double kRoundoffUlps = 100;
  constexpr double kThirdDerivative = 10;
  return {1e-6, kRoundoffUlps * kUnitRoundoff * std::abs(loss_scale) / h + kThirdDerivative * h * h};
}

// One compared entry of a gradient.
struct GradEntry {
  int64_t index = 0;
  double numeric = 0, analytic = 0;
};

inline bool grad_agrees(const GradEntry& e, const GradTolerance& tol) {
  const double err = std::abs(e.numeric - e.analytic);
  return err <= tol.rtol * std::max(std::abs(e.numeric), std::abs(e.analytic)) + tol.atol;  // NaN fails
}

// The largest |num - ana| / (rtol * max + atol) over `entries` (<= 1 when all agree):
// how close a check came to its bound, printed by the tests.
inline double grad_worst_ratio(const std::vector<GradEntry>& entries, const GradTolerance& tol) {
  double worst = 0;
  for (const auto& e : entries)
    worst = std::max(worst, std::abs(e.numeric - e.analytic) /
                                (tol.rtol * std::max(std::abs(e.numeric), std::abs(e.analytic)) + tol.atol));
  return worst;
}

// The entries that disagree, described one per line ("" when all agree).
inline std::string grad_disagreements(const std::vector<GradEntry>& entries, const GradTolerance& tol) {
  std::ostringstream out;
  out.precision(6);
  for (const auto& e : entries)
    if (!grad_agrees(e, tol))
      out << "  [" << e.index << "] numeric " << e.numeric << " analytic " << e.analytic << " |diff| "
          << std::abs(e.numeric - e.analytic) << " > " << tol.rtol << " * max + " << tol.atol << "\n";
  return out.str();
}

}  // namespace kumiko::test
