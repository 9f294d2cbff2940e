#include "kumiko/ckpt/h5file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include <hdf5.h>
#ifdef KUMIKO_PARALLEL_HDF5
#include <mpi.h>
#endif

#include "kumiko/comm/communicator.h"
#include "kumiko/core/error.h"

namespace kumiko::ckpt {
namespace {

// HDF5 prints its own error stack to stderr by default; kumiko reports errors itself.
void silence_hdf5() {
  static const bool once = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)once;
}

// The innermost HDF5 error message, for exception texts.
std::string hdf5_message() {
  std::string message;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_DOWNWARD,
      [](unsigned n, const H5E_error2_t* err, void* data) -> herr_t {
        auto* out = static_cast<std::string*>(data);
        if (n == 0 && err->desc) *out = err->desc;
        return 0;
      },
      &message);
  return message.empty() ? "HDF5 error" : message;
}

// Owns one HDF5 identifier and closes it with the matching function.
class Handle {
 public:
  Handle() = default;
  Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  Handle(Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& o) noexcept {
    std::swap(id_, o.id_);
    std::swap(close_, o.close_);
    return *this;
  }
  ~Handle() {
    if (id_ >= 0 && close_) close_(id_);
  }
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }

 private:
  hid_t id_ = H5I_INVALID_HID;
  herr_t (*close_)(hid_t) = nullptr;
};

std::vector<hsize_t> dims_of(const Shape& shape) {
  return std::vector<hsize_t>(shape.begin(), shape.end());
}

// Chunks of at most ~1M elements along the first dimension.
std::vector<hsize_t> chunk_of(const Shape& shape) {
  std::vector<hsize_t> chunk = dims_of(shape);
  if (chunk.empty()) return chunk;
  hsize_t row = 1;
  for (size_t i = 1; i < chunk.size(); ++i) row *= std::max<hsize_t>(chunk[i], 1);
  chunk[0] = std::clamp<hsize_t>((1u << 20) / std::max<hsize_t>(row, 1), 1, std::max<hsize_t>(chunk[0], 1));
  for (auto& c : chunk) c = std::max<hsize_t>(c, 1);
  return chunk;
}

void ensure_groups(hid_t file, const std::string& name) {
  for (size_t pos = name.find('/', 1); pos != std::string::npos; pos = name.find('/', pos + 1)) {
    const std::string group = name.substr(0, pos);
    if (group.empty()) continue;
    if (H5Lexists(file, group.c_str(), H5P_DEFAULT) > 0) continue;
    Handle g(H5Gcreate2(file, group.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
    KUMIKO_CHECK(g.valid(), "cannot create group ", group, ": ", hdf5_message());
  }
}

// File access: HDF5's file locking where the file system supports it, ignored where
// it does not (NFS, some Lustre mounts); HDF5_USE_FILE_LOCKING=FALSE still turns it off.
// A raw-data chunk cache of 64 MiB (HDF5's default, 1 MiB, holds no 4 MiB chunk).
Handle file_access() {
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5Pset_file_locking(fapl.get(), true, true);
  H5Pset_cache(fapl.get(), 0, 1009, size_t{64} << 20, 0.75);
  return fapl;
}

// A selection of `slabs` in `space` (none when empty). The first slab is SET, not OR-ed
// onto an empty selection, so that one slab stays a regular hyperslab.
void select_slabs(hid_t space, const std::vector<Slab>& slabs, const std::string& name) {
  if (slabs.empty()) H5Sselect_none(space);
  for (size_t i = 0; i < slabs.size(); ++i) {
    const std::vector<hsize_t> start(slabs[i].start.begin(), slabs[i].start.end());
    const std::vector<hsize_t> count(slabs[i].count.begin(), slabs[i].count.end());
    KUMIKO_CHECK(H5Sselect_hyperslab(space, i == 0 ? H5S_SELECT_SET : H5S_SELECT_OR, start.data(), nullptr,
                                     count.data(), nullptr) >= 0,
                 "cannot select a slab of ", name, ": ", hdf5_message());
  }
}

int64_t slab_elements(const std::vector<Slab>& slabs) {
  int64_t n = 0;
  for (const auto& slab : slabs) {
    int64_t e = 1;
    for (int64_t c : slab.count) e *= c;
    n += e;
  }
  return n;
}

// The memory side of a transfer of `slabs`: shaped like the slab when there is one
// (HDF5 then copies whole rows: reading half of 40 [768, 3072] tensors went from 78-86
// to 330-440 MB/s against a one-dimensional space), else one dimension of their n
// elements.
Handle memory_space(int64_t n);
Handle memory_space_for(const std::vector<Slab>& slabs, int64_t n) {
  if (slabs.size() != 1) return memory_space(n);
  const std::vector<hsize_t> dims(slabs[0].count.begin(), slabs[0].count.end());
  return Handle(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
}

// A one-dimensional memory space of n elements (n = 0: one element, none selected).
Handle memory_space(int64_t n) {
  const hsize_t dim = static_cast<hsize_t>(std::max<int64_t>(n, 1));
  Handle space(H5Screate_simple(1, &dim, nullptr), H5Sclose);
  if (n == 0) H5Sselect_none(space.get());
  return space;
}

}  // namespace

std::vector<Slab> slabs_of_runs(const Shape& shape, const std::vector<std::pair<int64_t, int64_t>>& runs) {
  KUMIKO_CHECK(shape.size() == 1 || shape.size() == 2, "slabs_of_runs: rank ", shape.size(),
               " datasets are not supported");
  std::vector<Slab> out;
  if (shape.size() == 1) {
    for (const auto& [offset, count] : runs) {
      if (count == 0) continue;
      if (!out.empty() && out.back().start[0] + out.back().count[0] == offset) {
        out.back().count[0] += count;
      } else {
        out.push_back({{offset}, {count}});
      }
    }
    return out;
  }
  const int64_t cols = shape[1];
  // Adds rows x [col, col + width), merged into the previous slab when it continues it.
  auto add = [&](int64_t row, int64_t col, int64_t rows, int64_t width) {
    if (!out.empty()) {
      auto& last = out.back();
      if (last.start[1] == col && last.count[1] == width && last.start[0] + last.count[0] == row) {
        last.count[0] += rows;
        return;
      }
    }
    out.push_back({{row, col}, {rows, width}});
  };
  for (auto [offset, count] : runs) {
    if (count > 0 && (offset % cols != 0 || count < cols)) {  // a partial first row
      const int64_t width = std::min(count, cols - offset % cols);
      add(offset / cols, offset % cols, 1, width);
      offset += width;
      count -= width;
    }
    if (count >= cols) {  // whole rows
      const int64_t rows = count / cols;
      add(offset / cols, 0, rows, cols);
      offset += rows * cols;
      count -= rows * cols;
    }
    if (count > 0) add(offset / cols, 0, 1, count);  // a partial last row
  }
  return out;
}

struct H5Writer::Impl {
  Handle file;
  Handle transfer;  // dataset transfer properties: collective MPI-IO in a parallel writer
  bool writes_whole = true;  // this rank writes the whole-dataset calls (group rank 0)
};

H5Writer::H5Writer(std::string path) : path_(std::move(path)), impl_(std::make_unique<Impl>()) {
  silence_hdf5();
  temp_path_ = path_ + ".tmp-" + std::to_string(::getpid());
  const auto parent = std::filesystem::path(path_).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  Handle fapl = file_access();
  impl_->file = Handle(H5Fcreate(temp_path_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose);
  KUMIKO_USER_CHECK(impl_->file.valid(), temp_path_, ": cannot create HDF5 file: ", hdf5_message());
}

bool H5Writer::parallel_available() {
#ifdef KUMIKO_PARALLEL_HDF5
  return true;
#else
  return false;
#endif
}

H5Writer::H5Writer(std::string path, comm::Communicator& group)
    : path_(std::move(path)), group_(&group), impl_(std::make_unique<Impl>()) {
  silence_hdf5();
#ifdef KUMIKO_PARALLEL_HDF5
  const auto* mpi = static_cast<const MPI_Comm*>(group.mpi_comm());
  KUMIKO_CHECK(mpi != nullptr, "parallel HDF5 needs an MPI communicator; group '", group.name(), "' is not one");
  // One temporary name for all: that of group rank 0's process.
  int64_t pid = ::getpid();
  group.broadcast(&pid, 1, 0);
  temp_path_ = path_ + ".tmp-" + std::to_string(pid);
  const auto parent = std::filesystem::path(path_).parent_path();
  if (group.rank() == 0 && !parent.empty()) std::filesystem::create_directories(parent);
  group.barrier();
  Handle fapl = file_access();
  H5Pset_fapl_mpio(fapl.get(), *mpi, MPI_INFO_NULL);
  H5Pset_all_coll_metadata_ops(fapl.get(), true);
  H5Pset_coll_metadata_write(fapl.get(), true);
  impl_->file = Handle(H5Fcreate(temp_path_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose);
  KUMIKO_USER_CHECK(impl_->file.valid(), temp_path_, ": cannot create HDF5 file through MPI-IO: ", hdf5_message());
  impl_->transfer = Handle(H5Pcreate(H5P_DATASET_XFER), H5Pclose);
  // Collective: required for the checksum filter's parallel writes, and lets MPI-IO
  // aggregate many ranks' small pieces into large file accesses.
  H5Pset_dxpl_mpio(impl_->transfer.get(), H5FD_MPIO_COLLECTIVE);
  impl_->writes_whole = group.rank() == 0;
#else
  KUMIKO_CHECK(false, path_, ": this build has serial HDF5; parallel checkpoint writes need libhdf5-openmpi-dev");
#endif
}

H5Writer::~H5Writer() {
  if (impl_ && impl_->file.valid()) {
    impl_->file = Handle();
    if (!group_ || group_->rank() == 0) std::remove(temp_path_.c_str());
  }
}

namespace {
// A chunked, checksummed dataset (contiguous when empty or scalar).
Handle create_numeric(hid_t file, const std::string& name, const Shape& shape, hid_t type) {
  ensure_groups(file, name);
  const auto dims = dims_of(shape);
  Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
  Handle plist(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  if (numel_of(shape) > 0 && !dims.empty()) {
    const auto chunk = chunk_of(shape);
    H5Pset_chunk(plist.get(), static_cast<int>(chunk.size()), chunk.data());
    H5Pset_fletcher32(plist.get());
  }
  Handle set(H5Dcreate2(file, name.c_str(), type, space.get(), H5P_DEFAULT, plist.get(), H5P_DEFAULT),
             H5Dclose);
  KUMIKO_CHECK(set.valid(), "cannot create dataset ", name, ": ", hdf5_message());
  return set;
}

// The transfer properties: the writer's (collective) or the default.
hid_t transfer_of(const Handle& transfer) { return transfer.valid() ? transfer.get() : H5P_DEFAULT; }

// Writes a whole dataset from `data`; in a parallel writer only where `whole` (group
// rank 0), the others taking part with an empty selection.
void write_whole(hid_t set, hid_t type, const Handle& transfer, bool whole, const void* data,
                 const std::string& name) {
  Handle file_space(H5Dget_space(set), H5Sclose);
  if (!whole) H5Sselect_none(file_space.get());
  const hssize_t n = whole ? H5Sget_simple_extent_npoints(file_space.get()) : 0;
  Handle mem_space = whole ? Handle(H5Scopy(file_space.get()), H5Sclose) : memory_space(0);
  KUMIKO_CHECK(H5Dwrite(set, type, mem_space.get(), file_space.get(), transfer_of(transfer), n ? data : nullptr) >= 0,
               "cannot write dataset ", name, ": ", hdf5_message());
}
}  // namespace

void H5Writer::write_f32_slabs(const std::string& name, const Shape& shape, const std::vector<Slab>& slabs,
                               const float* data) {
  Handle set = create_numeric(impl_->file.get(), name, shape, H5T_NATIVE_FLOAT);
  if (numel_of(shape) == 0) return;
  const int64_t n = slab_elements(slabs);
  KUMIKO_CHECK(parallel() || n == numel_of(shape), "write_f32_slabs: a serial writer must cover ", name);
  Handle file_space(H5Dget_space(set.get()), H5Sclose);
  select_slabs(file_space.get(), slabs, name);
  Handle mem_space = memory_space_for(slabs, n);
  KUMIKO_CHECK(H5Dwrite(set.get(), H5T_NATIVE_FLOAT, mem_space.get(), file_space.get(), transfer_of(impl_->transfer),
                        n ? data : nullptr) >= 0,
               "cannot write dataset ", name, ": ", hdf5_message());
}

namespace {
void write_numeric(hid_t file, const Handle& transfer, bool whole, const std::string& name, const Shape& shape,
                   hid_t type, const void* data) {
  Handle set = create_numeric(file, name, shape, type);
  if (numel_of(shape) > 0) write_whole(set.get(), type, transfer, whole, data, name);
}
}  // namespace

void H5Writer::write_f32(const std::string& name, const Shape& shape, const float* data) {
  write_numeric(impl_->file.get(), impl_->transfer, impl_->writes_whole, name, shape, H5T_NATIVE_FLOAT, data);
}
void H5Writer::write_f64(const std::string& name, const Shape& shape, const double* data) {
  write_numeric(impl_->file.get(), impl_->transfer, impl_->writes_whole, name, shape, H5T_NATIVE_DOUBLE, data);
}
void H5Writer::write_i32(const std::string& name, const Shape& shape, const int32_t* data) {
  write_numeric(impl_->file.get(), impl_->transfer, impl_->writes_whole, name, shape, H5T_NATIVE_INT32, data);
}
void H5Writer::write_i64(const std::string& name, const Shape& shape, const int64_t* data) {
  write_numeric(impl_->file.get(), impl_->transfer, impl_->writes_whole, name, shape, H5T_NATIVE_INT64, data);
}

void H5Writer::write_string(const std::string& name, const std::string& text) {
  ensure_groups(impl_->file.get(), name);
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<size_t>(text.size(), 1));
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle set(H5Dcreate2(impl_->file.get(), name.c_str(), type.get(), space.get(), H5P_DEFAULT,
                        H5P_DEFAULT, H5P_DEFAULT),
             H5Dclose);
  KUMIKO_CHECK(set.valid(), "cannot create dataset ", name, ": ", hdf5_message());
  const std::string padded = text.empty() ? std::string(1, '\0') : text;
  write_whole(set.get(), type.get(), impl_->transfer, impl_->writes_whole, padded.data(), name);
}

void H5Writer::set_attr(const std::string& key, const std::string& value) {
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<size_t>(value.size(), 1));
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate2(impl_->file.get(), key.c_str(), type.get(), space.get(), H5P_DEFAULT,
                         H5P_DEFAULT),
              H5Aclose);
  KUMIKO_CHECK(attr.valid(), "cannot create attribute ", key);
  const std::string padded = value.empty() ? std::string(1, '\0') : value;
  H5Awrite(attr.get(), type.get(), padded.data());
}

void H5Writer::set_attr(const std::string& key, int64_t value) {
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate2(impl_->file.get(), key.c_str(), H5T_NATIVE_INT64, space.get(), H5P_DEFAULT,
                         H5P_DEFAULT),
              H5Aclose);
  KUMIKO_CHECK(attr.valid(), "cannot create attribute ", key);
  H5Awrite(attr.get(), H5T_NATIVE_INT64, &value);
}

void H5Writer::commit() {
  KUMIKO_CHECK(impl_->file.valid(), "H5Writer::commit called twice");
  KUMIKO_CHECK(H5Fflush(impl_->file.get(), H5F_SCOPE_GLOBAL) >= 0, "flush failed: ", hdf5_message());
  impl_->file = Handle();  // close (collective in a parallel writer: MPI_File_close syncs)
  if (group_) {
    group_->barrier();  // every member's part is in the file
    if (group_->rank() != 0) {
      group_->barrier();  // rank 0 has renamed it
      return;
    }
  }
  const int fd = ::open(temp_path_.c_str(), O_RDONLY);
  KUMIKO_CHECK(fd >= 0, "cannot reopen ", temp_path_, " for fsync");
  const int rc = ::fsync(fd);
  ::close(fd);
  KUMIKO_CHECK(rc == 0, "fsync failed on ", temp_path_);
  std::filesystem::rename(temp_path_, path_);
  const auto parent = std::filesystem::path(path_).parent_path();
  const int dir = ::open(parent.empty() ? "." : parent.c_str(), O_RDONLY | O_DIRECTORY);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  if (group_) group_->barrier();
}

struct H5Reader::Impl {
  Handle file;
};

H5Reader::H5Reader(std::string path) : path_(std::move(path)), impl_(std::make_unique<Impl>()) {
  silence_hdf5();
  KUMIKO_USER_CHECK(std::filesystem::exists(path_), path_, ": no such file");
  KUMIKO_USER_CHECK(H5Fis_hdf5(path_.c_str()) > 0, path_,
                    ": not a readable HDF5 file (truncated or corrupt?)");
  Handle fapl = file_access();
  impl_->file = Handle(H5Fopen(path_.c_str(), H5F_ACC_RDONLY, fapl.get()), H5Fclose);
  KUMIKO_USER_CHECK(impl_->file.valid(), path_, ": cannot open HDF5 file: ", hdf5_message());
}

H5Reader::~H5Reader() = default;

bool H5Reader::has(const std::string& name) const {
  // Check each path component so that a missing group is not an error.
  for (size_t pos = name.find('/', 1);; pos = name.find('/', pos + 1)) {
    const std::string prefix = name.substr(0, pos);
    if (H5Lexists(impl_->file.get(), prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (pos == std::string::npos) return true;
  }
}

Shape H5Reader::shape(const std::string& name) const {
  KUMIKO_USER_CHECK(has(name), path_, ": missing dataset '", name, "'");
  Handle set(H5Dopen2(impl_->file.get(), name.c_str(), H5P_DEFAULT), H5Dclose);
  KUMIKO_USER_CHECK(set.valid(), path_, ": cannot open dataset '", name, "': ", hdf5_message());
  Handle space(H5Dget_space(set.get()), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  std::vector<hsize_t> dims(std::max(rank, 0));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return Shape(dims.begin(), dims.end());
}

std::vector<std::string> H5Reader::list(const std::string& group) const {
  std::vector<std::string> names;
  if (!has(group)) return names;
  Handle g(H5Gopen2(impl_->file.get(), group.c_str(), H5P_DEFAULT), H5Gclose);
  KUMIKO_USER_CHECK(g.valid(), path_, ": '", group, "' is not a group");
  H5Literate(
      g.get(), H5_INDEX_NAME, H5_ITER_INC, nullptr,
      [](hid_t, const char* name, const H5L_info_t*, void* data) -> herr_t {
        static_cast<std::vector<std::string>*>(data)->emplace_back(name);
        return 0;
      },
      &names);
  return names;
}

namespace {
void read_numeric(const H5Reader& r, hid_t file, const std::string& name, const Shape& expected,
                  hid_t type, void* out) {
  const Shape actual = r.shape(name);
  KUMIKO_USER_CHECK(actual == expected, r.path(), ": tensor '", name, "' has shape ",
                    shape_str(actual), ", expected ", shape_str(expected));
  Handle set(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (numel_of(expected) == 0) return;
  KUMIKO_USER_CHECK(H5Dread(set.get(), type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) >= 0, r.path(),
                    ": cannot read tensor '", name, "' (checksum mismatch or corrupt data): ",
                    hdf5_message());
}
}  // namespace

void H5Reader::read_f32(const std::string& name, const Shape& expected, float* out) const {
  read_numeric(*this, impl_->file.get(), name, expected, H5T_NATIVE_FLOAT, out);
}
void H5Reader::read_f32_slabs(const std::string& name, const Shape& expected, const std::vector<Slab>& slabs,
                              float* out) const {
  const Shape actual = shape(name);
  KUMIKO_USER_CHECK(actual == expected, path_, ": tensor '", name, "' has shape ", shape_str(actual), ", expected ",
                    shape_str(expected));
  const int64_t n = slab_elements(slabs);
  if (n == 0) return;
  Handle set(H5Dopen2(impl_->file.get(), name.c_str(), H5P_DEFAULT), H5Dclose);
  Handle file_space(H5Dget_space(set.get()), H5Sclose);
  select_slabs(file_space.get(), slabs, name);
  Handle mem_space = memory_space_for(slabs, n);
  KUMIKO_USER_CHECK(H5Dread(set.get(), H5T_NATIVE_FLOAT, mem_space.get(), file_space.get(), H5P_DEFAULT, out) >= 0,
                    path_, ": cannot read tensor '", name, "' (checksum mismatch or corrupt data): ", hdf5_message());
}
void H5Reader::read_f64(const std::string& name, const Shape& expected, double* out) const {
  read_numeric(*this, impl_->file.get(), name, expected, H5T_NATIVE_DOUBLE, out);
}
void H5Reader::read_i32(const std::string& name, const Shape& expected, int32_t* out) const {
  read_numeric(*this, impl_->file.get(), name, expected, H5T_NATIVE_INT32, out);
}
void H5Reader::read_i64(const std::string& name, const Shape& expected, int64_t* out) const {
  read_numeric(*this, impl_->file.get(), name, expected, H5T_NATIVE_INT64, out);
}

std::string H5Reader::read_string(const std::string& name) const {
  KUMIKO_USER_CHECK(has(name), path_, ": missing dataset '", name, "'");
  Handle set(H5Dopen2(impl_->file.get(), name.c_str(), H5P_DEFAULT), H5Dclose);
  Handle type(H5Dget_type(set.get()), H5Tclose);
  KUMIKO_USER_CHECK(H5Tget_class(type.get()) == H5T_STRING, path_, ": '", name,
                    "' is not a string");
  KUMIKO_USER_CHECK(!H5Tis_variable_str(type.get()), path_, ": '", name,
                    "' is a variable-length string; expected fixed-length");
  std::string text(H5Tget_size(type.get()), '\0');
  KUMIKO_USER_CHECK(H5Dread(set.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, text.data()) >= 0,
                    path_, ": cannot read '", name, "'");
  while (!text.empty() && text.back() == '\0') text.pop_back();
  return text;
}

bool H5Reader::is_group(const std::string& name) const {
  if (name == "/") return true;
  if (!has(name)) return false;
  H5O_info_t info;
  if (H5Oget_info_by_name(impl_->file.get(), name.c_str(), &info, H5P_DEFAULT) < 0) return false;
  return info.type == H5O_TYPE_GROUP;
}

std::vector<char> H5Reader::read_raw(const std::string& name) const {
  Handle set(H5Dopen2(impl_->file.get(), name.c_str(), H5P_DEFAULT), H5Dclose);
  KUMIKO_USER_CHECK(set.valid(), path_, ": cannot open dataset '", name, "': ", hdf5_message());
  Handle type(H5Dget_type(set.get()), H5Tclose);
  Handle native(H5Tget_native_type(type.get(), H5T_DIR_ASCEND), H5Tclose);
  Handle space(H5Dget_space(set.get()), H5Sclose);
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  std::vector<char> bytes(static_cast<size_t>(std::max<hssize_t>(n, 1)) * H5Tget_size(native.get()));
  if (n > 0)
    KUMIKO_USER_CHECK(H5Dread(set.get(), native.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data()) >= 0,
                      path_, ": dataset '", name, "' failed its checksum or cannot be read: ", hdf5_message());
  return bytes;
}

bool H5Reader::has_attr(const std::string& key) const {
  return H5Aexists(impl_->file.get(), key.c_str()) > 0;
}

std::string H5Reader::attr_string(const std::string& key) const {
  KUMIKO_USER_CHECK(has_attr(key), path_, ": missing attribute '", key, "'");
  Handle attr(H5Aopen(impl_->file.get(), key.c_str(), H5P_DEFAULT), H5Aclose);
  Handle type(H5Aget_type(attr.get()), H5Tclose);
  KUMIKO_USER_CHECK(H5Tget_class(type.get()) == H5T_STRING && !H5Tis_variable_str(type.get()),
                    path_, ": attribute '", key, "' is not a fixed-length string");
  std::string text(H5Tget_size(type.get()), '\0');
  H5Aread(attr.get(), type.get(), text.data());
  while (!text.empty() && text.back() == '\0') text.pop_back();
  return text;
}

int64_t H5Reader::attr_int(const std::string& key) const {
  KUMIKO_USER_CHECK(has_attr(key), path_, ": missing attribute '", key, "'");
  Handle attr(H5Aopen(impl_->file.get(), key.c_str(), H5P_DEFAULT), H5Aclose);
  int64_t value = 0;
  KUMIKO_USER_CHECK(H5Aread(attr.get(), H5T_NATIVE_INT64, &value) >= 0, path_,
                    ": attribute '", key, "' is not an integer");
  return value;
}

}  // namespace kumiko::ckpt
