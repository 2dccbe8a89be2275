// sals-calibrate's CUDA path (CudaBackendOptions::key_covariance through the tool's key runners)
// against its CPU path on the three fixture models, over real calibration text
// (tests/fixtures/calibration.txt, 16K tokens in sequences of 512), f16 and bf16:
//   - the device's raw k k^T sums against the CPU's (same token count; relative Frobenius error
//     of the order of the dtype's rounding);
//   - per layer and rank (D/8, D/4, D/2): the energy each basis captures of the CPU (fp32)
//     covariance agrees within 1e-3, and so does each run's own reported energy; the largest
//     principal angle between the two rank-r subspaces is printed (and must stay below 0.1 rad:
//     where eigenvalues r and r+1 are close the subspaces may turn without losing energy, so the
//     energies are the criterion).
// Also: TakeKeyCovariance zeroes the sums, and refuses a backend created without the option.
#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend/cuda_loader.h"
#include "engine/sals/calibration.h"
#include "gtest/gtest.h"
#include "tools/calibrate/calibration_data.h"
#include "tools/calibrate/key_runners.h"
#include "tools/common/hf_model.h"

namespace sals {
namespace {

constexpr int kSeqLen = 512;
constexpr int64_t kTokens = 16384;

// The fixtures where the build saw them, else under the working directory: the GPU machine runs
// a copy of the repository from its root.
std::filesystem::path FixturesRoot() {
  if (std::filesystem::exists(SALS_FIXTURES_BUILD_DIR)) return SALS_FIXTURES_BUILD_DIR;
  return "tests/fixtures";
}

struct Case {
  std::string fixture;
  DType dtype;
};

std::string Name(const ::testing::TestParamInfo<Case>& info) {
  std::string name = info.param.fixture + (info.param.dtype == DType::kF16 ? "_f16" : "_bf16");
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

using Matrix = Eigen::MatrixXd;

// The layer's covariance as a full symmetric matrix (KeyCovariance keeps the lower triangle).
Matrix Full(const KeyCovariance& cov, int layer) {
  const int d = cov.width();
  const Matrix lower = Eigen::Map<const Matrix>(cov.sums(layer).data(), d, d);
  Matrix full = lower.selfadjointView<Eigen::Lower>();
  return full;
}

// Columns: the top `rank` eigenvectors of a spectrum (row-major D x D, descending).
Matrix Basis(const LayerSpectrum& s, int d, int rank) {
  const Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> v(
      s.eigenvectors.data(), d, d);
  return v.leftCols(rank);
}

class CudaCalibrationTest : public ::testing::TestWithParam<Case> {};

TEST_P(CudaCalibrationTest, AgreesWithTheCpuCalibration) {
  const Case& c = GetParam();
  auto model = LoadHfModel(FixturesRoot() / c.fixture);
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& config = model->config;
  auto text = ReadCalibrationFile(FixturesRoot() / "calibration.txt", DataFormat::kText);
  ASSERT_TRUE(text.ok()) << text.status();
  const std::vector<int32_t> stream = model->tokenizer->Encode(text->texts[0], false);
  const std::vector<std::vector<int32_t>> seqs =
      CutSequences(stream, model->tokenizer->bos_id(), kSeqLen, kTokens);
  ASSERT_GE(seqs.size(), 8u);

  auto run = [&](KeyRunner& runner, KeyCovariance* cov) {
    for (int64_t next = 0; next < static_cast<int64_t>(seqs.size());) {
      auto reached = runner.RunUnit(next);
      ASSERT_TRUE(reached.ok()) << reached.status();
      next = *reached;
    }
    ASSERT_TRUE(runner.Flush(cov).ok());
  };
  KeyCovariance cpu(config), gpu(config);
  {
    auto runner =
        CreateCpuKeyRunner(config, *model->weights, &seqs, kSeqLen, 256, &cpu, [](int64_t) {});
    ASSERT_TRUE(runner.ok()) << runner.status();
    run(**runner, &cpu);
  }
  {
    // Steps of 1536 tokens: three whole sequences each; the last step may hold fewer.
    auto runner =
        CreateCudaKeyRunner(config, *model->weights, &seqs, 0, 1536, c.dtype, [](int64_t) {});
    ASSERT_TRUE(runner.ok()) << runner.status();
    run(**runner, &gpu);
  }
  const double sums_tolerance = c.dtype == DType::kF16 ? 1e-2 : 3e-2;
  for (int l = 0; l < config.num_layers; ++l) {
    ASSERT_EQ(gpu.tokens(l), cpu.tokens(l));
    const Matrix a = Full(cpu, l), b = Full(gpu, l);
    const double rel = (b - a).norm() / a.norm();
    std::printf("layer %d: sums relative error %.2e\n", l, rel);
    EXPECT_LT(rel, sums_tolerance) << "layer " << l;
  }

  auto cpu_spectra = cpu.Decompose();
  auto gpu_spectra = gpu.Decompose();
  ASSERT_TRUE(cpu_spectra.ok()) << cpu_spectra.status();
  ASSERT_TRUE(gpu_spectra.ok()) << gpu_spectra.status();
  const int d = config.kv_width();
  for (int l = 0; l < config.num_layers; ++l) {
    const Matrix truth = Full(cpu, l);
    const double trace = truth.trace();
    for (int rank : {std::max(1, d / 8), d / 4, d / 2}) {
      const Matrix u_cpu = Basis(cpu_spectra->layers[l], d, rank);
      const Matrix u_gpu = Basis(gpu_spectra->layers[l], d, rank);
      // Energy of the fp32 keys each basis captures.
      const double e_cpu = (u_cpu.transpose() * truth * u_cpu).trace() / trace;
      const double e_gpu = (u_gpu.transpose() * truth * u_gpu).trace() / trace;
      const double reported_cpu = cpu_spectra->layers[l].Energy(rank);
      const double reported_gpu = gpu_spectra->layers[l].Energy(rank);
      // Largest principal angle: acos of the smallest singular value of U_cpu^T U_gpu.
      const Eigen::JacobiSVD<Matrix> svd(u_cpu.transpose() * u_gpu);
      const double cos_min = std::clamp(svd.singularValues().minCoeff(), 0.0, 1.0);
      const double angle = std::acos(cos_min);
      std::printf(
          "layer %d rank %d: energy of the fp32 keys cpu %.6f gpu %.6f (diff %.1e); reported "
          "cpu %.6f gpu %.6f; largest principal angle %.2e rad\n",
          l, rank, e_cpu, e_gpu, e_cpu - e_gpu, reported_cpu, reported_gpu, angle);
      EXPECT_NEAR(e_gpu, e_cpu, 1e-3) << "layer " << l << " rank " << rank;
      EXPECT_NEAR(reported_gpu, reported_cpu, 1e-3) << "layer " << l << " rank " << rank;
      EXPECT_LT(angle, 0.1) << "layer " << l << " rank " << rank;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, CudaCalibrationTest,
    ::testing::Values(Case{"llama31-bpe", DType::kF16}, Case{"llama31-bpe", DType::kBF16},
                      Case{"mistral-gqa", DType::kF16}, Case{"mistral-gqa", DType::kBF16},
                      Case{"llama2-mha", DType::kF16}, Case{"llama2-mha", DType::kBF16}),
    Name);

TEST(CudaKeyCovarianceTest, TakeZeroesTheSumsAndNeedsTheOption) {
  auto model = LoadHfModel(FixturesRoot() / "mistral-gqa");
  ASSERT_TRUE(model.ok()) << model.status();
  KvPoolConfig pool;
  pool.num_blocks = 4;
  pool.block_size = 16;
  auto plain = LoadCudaBackend(model->config, *model->weights, pool, CudaBackendOptions{});
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ((*plain)->TakeKeyCovariance().status().code(), absl::StatusCode::kFailedPrecondition);

  CudaBackendOptions options;
  options.key_covariance = true;
  auto backend = LoadCudaBackend(model->config, *model->weights, pool, options);
  ASSERT_TRUE(backend.ok()) << backend.status();
  ForwardBatch batch;
  batch.tokens = {1, 5, 9, 13, 17, 21, 25};
  SequenceSlice& s = batch.seqs.emplace_back();
  s.num_tokens = 7;
  s.block_table = {0};
  std::vector<int32_t> ids;
  ASSERT_TRUE((*backend)->ForwardGreedy(batch, &ids).ok());
  auto first = (*backend)->TakeKeyCovariance();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->tokens, 7);
  ASSERT_EQ(first->layers.size(), static_cast<size_t>(model->config.num_layers));
  const int d = model->config.kv_width();
  for (const std::vector<double>& layer : first->layers) {
    ASSERT_EQ(layer.size(), static_cast<size_t>(d) * d);
    const Eigen::Map<const Matrix> m(layer.data(), d, d);
    EXPECT_GT(m.trace(), 0.0);
    EXPECT_LT((m - m.transpose()).norm(), 1e-6 * m.norm()) << "symmetric";
  }
  auto second = (*backend)->TakeKeyCovariance();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->tokens, 0);
  for (const std::vector<double>& layer : second->layers) {
    EXPECT_TRUE(std::all_of(layer.begin(), layer.end(), [](double v) { return v == 0.0; }));
  }
}

}  // namespace
}  // namespace sals
