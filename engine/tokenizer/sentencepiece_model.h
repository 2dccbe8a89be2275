// A SentencePiece BPE model (tokenizer.model of Llama-2 and Mistral), read with protobuf and
// encoded/decoded the way libsentencepiece does: identity normalization (optionally removing
// extra whitespace), "▁" for spaces with a dummy prefix, score-ordered BPE merges, byte fallback.
//
// Why not Debian's libsentencepiece: it bundles its own protobuf 3.14 runtime with exported
// symbols, and a process that also loads the system libprotobuf (every gRPC program) crashes at
// start-up when the two runtimes bind to each other's symbols.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace sals {

class SentencePieceModel {
 public:
  // Errors name the file: unreadable, not a ModelProto, not BPE, or a normalizer other than
  // identity (NFKC needs the precompiled charsmap, which we don't implement).
  static absl::StatusOr<std::unique_ptr<SentencePieceModel>> Load(
      const std::filesystem::path& file);

  std::vector<int32_t> Encode(std::string_view text) const;
  // Encode, stopping once more than max_ids ids are out (the result is then a prefix of
  // Encode's): words go through BPE one stretch at a time when no piece of the vocabulary spans
  // a word's start (see word_separable_), else the whole text at once.
  std::vector<int32_t> EncodeAtMost(std::string_view text, size_t max_ids) const;
  // libsentencepiece's DecodeIds: control pieces vanish, unknown ones read " ⁇ ", byte pieces
  // form UTF-8 (one U+FFFD per invalid byte), "▁" reads as a space, the dummy prefix is dropped.
  std::string Decode(const std::vector<int32_t>& ids) const;

  int piece_size() const { return static_cast<int>(pieces_.size()); }
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t unk_id() const { return unk_id_; }
  const std::string& IdToPiece(int32_t id) const { return pieces_[id].piece; }
  bool IsControl(int32_t id) const { return pieces_[id].type == kControl; }
  bool IsUnknown(int32_t id) const { return pieces_[id].type == kUnknown; }
  bool IsByte(int32_t id) const { return pieces_[id].type == kByte; }
  // The id of `piece`, or unk_id when it is not in the vocabulary.
  int32_t PieceToId(std::string_view piece) const;

 private:
  enum Type { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };
  struct Piece {
    std::string piece;
    float score = 0.0f;
    Type type = kNormal;
    int byte = -1;  // the byte of a byte piece "<0xHH>"
  };

  std::string Normalize(std::string_view text) const;
  // BPE over one normalized string: (piece text, id) pairs, unknown pieces as unk_id.
  void EncodeBpe(std::string_view normalized,
                 std::vector<std::pair<std::string, int32_t>>* out) const;
  // Appends the ids of BPE pieces (byte fallback; a run of unknown pieces is one <unk> without
  // it, `previous_unknown` carrying the run across calls).
  void AppendIds(const std::vector<std::pair<std::string, int32_t>>& pieces, bool* previous_unknown,
                 std::vector<int32_t>* ids) const;

  std::vector<Piece> pieces_;
  absl::flat_hash_map<std::string, int32_t> mergeable_;  // normal, user-defined, unused pieces
  absl::flat_hash_map<std::string, int32_t> reserved_;   // control, unknown, byte pieces
  std::vector<std::string> user_defined_;                // matched whole before merging
  int32_t byte_ids_[256];
  int32_t bos_id_ = -1, eos_id_ = -1, unk_id_ = 0;
  bool byte_fallback_ = false;
  bool add_dummy_prefix_ = true;
  bool remove_extra_whitespaces_ = false;
  bool escape_whitespaces_ = true;
  // No piece holds a space symbol right after another character: BPE never merges across the
  // start of a word (a space symbol after a non-space), so the normalized text's encoding is the
  // concatenation of its stretches' encodings when cut there.
  bool word_separable_ = false;
  std::string unk_surface_;
};

}  // namespace sals
