// Options, the INI reader and the INI writer (validate.cpp holds the checks after parsing).
//
// CLI11 2.1.2 (Debian) reads `[train] lr = 1` as an item with parents {"train"}, which
// it would route to a *subcommand* named "train"; and it reads config files only for the
// top-level app, not for a subcommand such as `kumiko config`. So kumiko keeps CLI11's
// INI parser (IniReader below, a CLI::ConfigINI) but flattens each item to the option
// name "train.lr" and applies the file itself once the (sub)command's arguments are
// parsed, as CLI11's own _parse_single_config does: a key already given on the command
// line is skipped, so the command line wins.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <limits>
#include <memory>
#include <set>
#include <sstream>

#include "config/fields.h"
#include "kumiko/config/config.h"
#include "kumiko/core/error.h"

namespace kumiko::config {
namespace {

std::string in_quotes(const std::string& s) { return "'" + s + "'"; }

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(s);
  while (std::getline(in, part, sep)) parts.push_back(part);
  return parts;
}

bool is_choice(const std::string& value, const char* choices) {
  const auto options = split(choices, '|');
  return std::find(options.begin(), options.end(), value) != options.end();
}

// ---- value checks, run by CLI11 on every value (command line and file) ----------------
// Each returns "" when the value is valid and may rewrite it into the canonical form that
// CLI11's own conversion reads the same way (CLI11 reads "010" as octal: we do not).

template <typename Int>
std::string check_integer(std::string& value, const char* choices) {
  const char* first = value.data();
  const char* last = value.data() + value.size();
  if (first != last && *first == '+') ++first;
  Int parsed{};
  auto [end, ec] = std::from_chars(first, last, parsed);
  if (ec == std::errc::result_out_of_range) {
    return "expected an integer in [" + std::to_string(std::numeric_limits<Int>::min()) + ", " +
           std::to_string(std::numeric_limits<Int>::max()) + "], got " + in_quotes(value);
  }
  if (ec != std::errc() || end != last || first == last) {
    if (std::is_unsigned_v<Int> && !value.empty() && value[0] == '-')
      return "expected a non-negative integer, got " + in_quotes(value);
    return "expected an integer, got " + in_quotes(value);
  }
  std::string canonical = std::to_string(parsed);
  if (choices != nullptr && !is_choice(canonical, choices))
    return std::string("expected one of ") + choices + ", got " + in_quotes(value);
  value = canonical;
  return "";
}

std::string check_number(std::string& value) {
  double parsed = 0;
  const char* first = value.data();
  const char* last = value.data() + value.size();
  if (first != last && *first == '+') ++first;
  auto [end, ec] = std::from_chars(first, last, parsed);
  if (ec != std::errc() || end != last || first == last || !std::isfinite(parsed))
    return "expected a number, got " + in_quotes(value);
  value = std::string(first, last);
  return "";
}

std::string check_bool(std::string& value) {
  std::string lower = value;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (lower == "true" || lower == "yes" || lower == "on" || lower == "1") {
    value = "true";
    return "";
  }
  if (lower == "false" || lower == "no" || lower == "off" || lower == "0") {
    value = "false";
    return "";
  }
  return "expected true or false, got " + in_quotes(value);
}

std::string check_string(const std::string& value, const char* choices) {
  if (choices != nullptr && !is_choice(value, choices))
    return std::string("expected one of ") + choices + ", got " + in_quotes(value);
  return "";
}

template <typename T>
CLI::Validator value_check(const T&, const char* choices) {
  return CLI::Validator(
      [choices](std::string& value) -> std::string {
        if constexpr (std::is_same_v<T, bool>)
          return check_bool(value);
        else if constexpr (std::is_integral_v<T>)
          return check_integer<T>(value, choices);
        else if constexpr (std::is_floating_point_v<T>)
          return check_number(value);
        else
          return check_string(value, choices);
      },
      "");
}

// ---- writing ---------------------------------------------------------------------------

std::string format_value(const std::string& v) { return "\"" + v + "\""; }
std::string format_value(bool v) { return v ? "true" : "false"; }
std::string format_value(double v) {
  char buffer[64];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), v);  // shortest round trip
  KUMIKO_CHECK(ec == std::errc(), "to_chars failed");
  return std::string(buffer, end);
}
template <typename Int>
requires std::is_integral_v<Int> std::string format_value(Int v) { return std::to_string(v); }

// Removes a trailing comment that starts with ';' or '#' after whitespace, outside quotes.
std::string strip_inline_comment(const std::string& line) {
  bool inside = false;
  for (size_t i = 0; i < line.size(); ++i) {
    char c = line[i];
    if (c == '"') inside = !inside;
    if (!inside && (c == ';' || c == '#') && i > 0 &&
        std::isspace(static_cast<unsigned char>(line[i - 1])))
      return line.substr(0, i);
  }
  return line;
}

// ---- the INI reader ----------------------------------------------------------------------

// CLI11's INI parser, flattening `[section] key` into one item named "section.key" and
// rejecting names that are not keys. set_source() names the file in its messages.
class IniReader : public CLI::ConfigINI {
 public:
  IniReader() : keys_(all_keys()) {}
  void set_source(std::string path) { path_ = std::move(path); }

  std::vector<CLI::ConfigItem> from_config(std::istream& input) const override {
    std::string text, line;
    while (std::getline(input, line)) text += strip_inline_comment(line) + "\n";
    std::istringstream clean(text);
    std::vector<CLI::ConfigItem> flat;
    std::set<std::string> seen;
    for (const CLI::ConfigItem& item : CLI::ConfigINI::from_config(clean)) {
      if (item.name == "++" || item.name == "--") {  // section open / close markers
        check_section(CLI::detail::join(item.parents, "."));
        continue;
      }
      CLI::ConfigItem out;
      out.name = item.fullname();
      out.inputs = item.inputs;
      check_key(out.name, item.parents.empty());
      if (!seen.insert(out.name).second) fail("duplicate key " + in_quotes(out.name));
      if (out.inputs.size() != 1) {
        fail(out.name + ": expected one value, got " +
             in_quotes(CLI::detail::join(out.inputs, " ")) +
             " (a key given twice, or a value with spaces or commas: quote it)");
      }
      flat.push_back(std::move(out));
    }
    return flat;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw CLI::ConfigError(path_ + ": " + what);
  }
  void check_section(const std::string& section) const {
    const std::vector<std::string> sections(std::begin(detail::kSections),
                                            std::end(detail::kSections));
    if (std::find(sections.begin(), sections.end(), section) != sections.end()) return;
    std::string near = nearest_name(section, sections);
    fail("unknown section [" + section + "]" +
         (near.empty()
              ? " (sections: [model] [data] [train] [parallel] [backend] [checkpoint] [log])"
              : " (did you mean [" + near + "]?)"));
  }
  void check_key(const std::string& key, bool outside_section) const {
    if (std::find(keys_.begin(), keys_.end(), key) != keys_.end()) return;
    std::string near = nearest_name(key, keys_);
    fail("unknown key " + in_quotes(key) + (outside_section ? " outside any [section]" : "") +
         (near.empty() ? " (docs/config.md lists every key)"
                       : " (did you mean " + in_quotes(near) + "?)"));
  }

  std::vector<std::string> keys_;
  std::string path_;
};

// Applies the file given with --config to the options not given on the command line.
void apply_config_file(CLI::App& app, const CLI::Option& file_option, Config& config,
                       IniReader& reader) {
  if (file_option.count() == 0) return;
  const std::string path = file_option.results().back();
  config.source_file = path;
  config.file_keys.clear();
  std::ifstream input(path);
  if (!input.good()) throw CLI::FileError(path + ": cannot open config file");
  reader.set_source(path);
  for (const CLI::ConfigItem& item : reader.from_config(input)) {
    CLI::Option* option = app.get_option_no_throw("--" + item.name);
    if (option == nullptr)
      throw CLI::ConfigError(path + ": key " + in_quotes(item.name) + " has no option");
    if (option->count() > 0) continue;  // given on the command line: the command line wins
    try {
      option->add_result(item.inputs);
      option->run_callback();
    } catch (const CLI::ParseError& e) {
      std::string what = e.what();
      const std::string prefix = option->get_name() + ": ";
      if (what.rfind(prefix, 0) == 0) what = what.substr(prefix.size());
      throw CLI::ConfigError(path + ": " + item.name + ": " + what);
    }
    config.file_keys.push_back(item.name);
  }
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      bool same = std::tolower(static_cast<unsigned char>(a[i - 1])) ==
                  std::tolower(static_cast<unsigned char>(b[j - 1]));
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (same ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

std::string leaf(const std::string& name) {
  size_t dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

}  // namespace

std::string nearest_name(const std::string& name, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_score = std::numeric_limits<size_t>::max();
  for (const std::string& candidate : candidates) {
    // Twice the edit distance, +1 when the section differs: ties go to the same section.
    size_t distance = edit_distance(name, candidate);
    // A key put in the wrong section (or outside any), or a truncated name, scores as one edit.
    const std::string a = leaf(name), b = leaf(candidate);
    if (a == b || (a.size() >= 3 && b.rfind(a, 0) == 0)) distance = std::min<size_t>(distance, 1);
    size_t score =
        2 * distance + (name.substr(0, name.find('.')) != candidate.substr(0, candidate.find('.')));
    if (score < best_score) {
      best_score = score;
      best = candidate;
    }
  }
  size_t limit = std::max<size_t>(2, name.size() / 3);
  return best_score / 2 <= limit ? best : "";
}

std::vector<std::string> all_keys() {
  std::vector<std::string> keys;
  const Config defaults;
  detail::for_each_field(defaults, [&](const char* key, const auto&, const char*, const char*) {
    keys.emplace_back(key);
  });
  return keys;
}

void add_options(CLI::App& app, Config& config) {
  auto reader = std::make_shared<IniReader>();
  app.config_formatter(reader);
  // A plain option, not CLI11's set_config: on a top-level app CLI11 would read the file
  // itself (without naming it in errors); on a subcommand it would not read it at all.
  CLI::Option* file_option =
      app.add_option("--config", "INI file with [section] key = value lines (docs/config.md)")
          ->type_name("FILE")
          ->configurable(false);
  detail::for_each_field(
      config, [&](const char* key, auto& field, const char* help, const char* choices) {
        std::string description = help;
        if (choices != nullptr) description += std::string(" (") + choices + ")";
        CLI::Option* option = app.add_option(std::string("--") + key, field, description);
        // A key given twice takes its last value, so that a wrapper script can pass a
        // default that the user's own later option replaces (scripts/slurm/train.sbatch).
        option->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
        option->capture_default_str();
        if constexpr (std::is_same_v<std::decay_t<decltype(field)>, bool>)
          option->default_str(field ? "true" : "false");
        option->transform(value_check(field, choices));
        option->group("[" + std::string(key).substr(0, std::string(key).find('.')) + "]");
      });
  app.parse_complete_callback([&app, file_option, &config, reader] {
    apply_config_file(app, *file_option, config, *reader);
  });
}

std::string to_ini(const Config& config) {
  std::ostringstream out;
  out << "# kumiko configuration: effective values";
  if (!config.source_file.empty())
    out << " (from " << config.source_file << " and the command line)";
  out << "\n";
  std::string section;
  detail::for_each_field(config, [&](const char* key, const auto& field, const char*, const char*) {
    std::string name = key;
    size_t dot = name.find('.');
    if (name.substr(0, dot) != section) {
      section = name.substr(0, dot);
      out << "\n[" << section << "]\n";
    }
    out << name.substr(dot + 1) << " = " << format_value(field) << "\n";
  });
  return out.str();
}

std::string describe_parse_error(const CLI::ParseError& e, const Config& config) {
  const std::string what = e.what();
  if (dynamic_cast<const CLI::FileError*>(&e) != nullptr) {
    const std::string suffix = " was not readable (missing?)";  // CLI11's own wording
    if (what.size() > suffix.size() && what.ends_with(suffix))
      return what.substr(0, what.size() - suffix.size()) + ": cannot open config file";
    return what;
  }
  if (dynamic_cast<const CLI::ExtrasError*>(&e) != nullptr) {
    // "The following argument(s) was/were not expected: --train.lrr=1 ..."
    size_t colon = what.find(": ");
    std::string args = colon == std::string::npos ? what : what.substr(colon + 2);
    std::string first = split(args, ' ').empty() ? args : split(args, ' ').front();
    if (first.rfind("--", 0) != 0) return "unexpected argument " + in_quotes(first);
    std::string name = first.substr(2, first.find('=') - 2);
    std::string near = nearest_name(name, all_keys());
    return "unknown option " + in_quotes("--" + name) +
           (near.empty() ? " (docs/config.md lists every key)"
                         : " (did you mean " + in_quotes("--" + near) + "?)");
  }
  if (dynamic_cast<const CLI::ConversionError*>(&e) != nullptr) {
    // "Could not convert: --train.steps = abc"
    const std::string prefix = "Could not convert: ";
    if (what.rfind(prefix, 0) == 0) {
      std::string rest = what.substr(prefix.size());
      size_t eq = rest.find(" = ");
      if (eq != std::string::npos)
        return rest.substr(0, eq) + ": cannot convert " + in_quotes(rest.substr(eq + 3));
    }
  }
  (void)config;  // ConfigError and ValidationError messages already name the file and key
  return what;
}

}  // namespace kumiko::config
