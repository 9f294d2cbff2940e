#pragma once
// Errors. Every failure in kumiko is an exception derived from kumiko::Error.
// UserError marks a mistake in what the user gave us (config, data, checkpoint,
// command line): the CLI prints its one-line message and exits with code 2.
// Other errors are bugs or system failures: exit code 1.
#include <sstream>
#include <stdexcept>
#include <string>

namespace kumiko {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A mistake in the user's input. The message is one line naming the file, key or
// tensor, what was expected and what was found.
class UserError : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void throw_check_failure(const char* cond, const char* file, int line,
                                      const std::string& message);
}  // namespace detail

}  // namespace kumiko

// KUMIKO_CHECK(cond, parts...): internal invariant; throws kumiko::Error with the
// condition, file and line.
#define KUMIKO_CHECK(cond, ...)                                                   \
  do {                                                                            \
    if (!(cond)) [[unlikely]]                                                     \
      ::kumiko::detail::throw_check_failure(#cond, __FILE__, __LINE__,            \
                                            ::kumiko::detail::concat(__VA_ARGS__)); \
  } while (0)

// KUMIKO_USER_CHECK(cond, parts...): a user mistake; throws kumiko::UserError whose
// message is exactly the given parts (one line, no source location).
#define KUMIKO_USER_CHECK(cond, ...)                                         \
  do {                                                                       \
    if (!(cond)) [[unlikely]]                                                \
      throw ::kumiko::UserError(::kumiko::detail::concat(__VA_ARGS__));      \
  } while (0)
