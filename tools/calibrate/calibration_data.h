// sals-calibrate's input: calibration data files in three formats, read and checked before the
// model loads, and the token stream cut into the sequences the model runs over.
//
//   text    a UTF-8 text file (.txt, .text, .md): one document.
//   jsonl   one JSON object per line with a string field "text" (.jsonl; other fields are ignored,
//           so C4's and most datasets' JSON lines work as they are; blank lines are skipped).
//   tokens  pre-tokenized ids as raw little-endian uint32 (.u32; numpy:
//           np.asarray(ids, dtype="<u4").tofile(path)), without BOS: every sequence gets one as
//           with text. Ids are checked against the model's vocabulary.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sals {

enum class DataFormat { kText, kJsonl, kTokens };

// "text", "jsonl" or "tokens"; "" (the flag's default) infers the format from each file's name.
// Errors name --data_format.
absl::StatusOr<DataFormat> ParseDataFormat(const std::string& name);

// From the extension (see above; case-insensitive). Any other extension is an error that names
// the file and --data_format.
absl::StatusOr<DataFormat> InferDataFormat(const std::filesystem::path& file);

// One data file, read and syntactically checked, not yet tokenized.
struct CalibrationFile {
  std::string path;
  DataFormat format = DataFormat::kText;
  std::vector<std::string> texts;  // text: one; jsonl: one per record
  std::vector<int32_t> tokens;     // tokens
};

// Reads `path` in `format`. Errors name the file and, for JSONL, the line and the field; a file
// without any text or token is an error.
absl::StatusOr<CalibrationFile> ReadCalibrationFile(const std::filesystem::path& path,
                                                    DataFormat format);

// The file's pre-tokenized ids all lie in [0, vocab_size); the error names the file, the first
// offending id's position (index and byte offset) and its value.
absl::Status CheckTokenIds(const CalibrationFile& file, int vocab_size);

// The token stream cut into sequences that each start with BOS (as text does at inference; none
// when bos < 0) and hold up to seq_len tokens; at most max_tokens tokens in all (0 = no limit).
std::vector<std::vector<int32_t>> CutSequences(const std::vector<int32_t>& stream, int32_t bos,
                                               int seq_len, int64_t max_tokens);

// A 64-bit FNV-1a hash of the sequences (lengths and ids), as 16 hex digits: a resumed run checks
// that it continues over the same data cut the same way.
std::string SequencesFingerprint(const std::vector<std::vector<int32_t>>& seqs);

}  // namespace sals
