// Writes the parity setup as a kumiko weights file plus /batch, for
// scripts/reference/make_golden.py (see tests/golden/README.md).
// Usage: parity_export tests/golden/parity_gpt2.ini OUT.h5
#include <cstdio>

#include "kumiko/ckpt/h5file.h"
#include "kumiko/config/config.h"
#include "parity_setup.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s PARITY.ini OUT.h5\n", argv[0]);
    return 2;
  }
  try {
    auto s = kumiko::parity::make_setup(argv[1]);
    kumiko::model::Transformer<float> model(s.dims, s.B, s.T);
    model.params().initialize(s.cfg.train.seed);
    kumiko::ckpt::H5Writer w(argv[2]);
    w.set_attr("format", "kumiko-weights");
    w.set_attr("format_version", int64_t{1});
    w.set_attr("step", int64_t{0});
    w.write_string("/config", kumiko::config::to_ini(s.cfg));
    const auto& p = model.params();
    for (size_t i = 0; i < p.size(); ++i)
      w.write_f32("/model/" + p.spec(static_cast<int>(i)).name, p.spec(static_cast<int>(i)).shape,
                  p.value(static_cast<int>(i)));
    w.write_i32("/batch/inputs", {s.B, s.T}, s.inputs.data());
    w.write_i32("/batch/targets", {s.B, s.T}, s.targets.data());
    w.commit();
    std::printf("wrote %s\n", argv[2]);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "parity_export: %s\n", e.what());
    return 1;
  }
}
