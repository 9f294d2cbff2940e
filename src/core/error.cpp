#include "kumiko/core/error.h"

namespace kumiko::detail {

void throw_check_failure(const char* cond, const char* file, int line,
                         const std::string& message) {
  std::string what = concat("check failed: ", cond, " at ", file, ":", line);
  if (!message.empty()) what += concat(": ", message);
  throw Error(what);
}

}  // namespace kumiko::detail
