// Tokenizer over a SentencePiece BPE model (tokenizer.model: Llama-2, Mistral); the model itself is
// sentencepiece_model.h.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer/sentencepiece_model.h"
#include "engine/tokenizer/tokenizer.h"

namespace sals {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // Loads a serialized ModelProto; NotFound / InvalidArgument name the file.
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> Load(
      const std::filesystem::path& model_file);
  ~SentencePieceTokenizer() override;

  // Overrides the model's own BOS / EOS (from the HF config files); bos_id -1 means none.
  // add_bos=false (tokenizer_config's add_bos_token) makes Encode never prepend BOS.
  void SetSpecialIds(int32_t bos_id, std::vector<int32_t> eos_ids, bool add_bos = true);

  // SentencePiece's encode (special-token text such as "<s>" stays plain text, as in
  // libsentencepiece), BOS first when asked.
  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override;
  // Stops a long text once more than max_tokens ids are out, where the vocabulary lets words be
  // encoded apart (SentencePieceModel::EncodeAtMost).
  std::vector<int32_t> EncodeAtMost(std::string_view text, bool add_bos,
                                    size_t max_tokens) const override;
  // skip_special: sentencepiece's DecodeIds (drops <s>/</s>, shows <unk> as " ⁇ ", one U+FFFD
  // per invalid byte). Otherwise HF's decoder for converted Llama tokenizers (Replace "▁" -> " ",
  // ByteFallback, Fuse, Strip one leading space) with control/unknown pieces as their text, e.g.
  // "<s> Hello".
  std::string Decode(std::span<const int32_t> ids, bool skip_special) const override;

  int vocab_size() const override;
  int32_t bos_id() const override { return bos_id_; }
  std::vector<int32_t> eos_ids() const override { return eos_ids_; }
  bool IsSpecial(int32_t id) const override;
  std::string IdToPiece(int32_t id) const override;
  int32_t PieceToId(std::string_view piece) const override;

 private:
  explicit SentencePieceTokenizer(std::unique_ptr<SentencePieceModel> sp);
  std::string DecodeWithSpecial(std::span<const int32_t> ids) const;

  std::unique_ptr<SentencePieceModel> sp_;
  int32_t bos_id_ = -1;
  std::vector<int32_t> eos_ids_;
  bool add_bos_ = true;
};

}  // namespace sals
