// SALS calibration: the spectrum (orthonormal, descending, signs fixed), energies, recovery of a
// planted low-rank key distribution, reconstruction error against the spectrum's prediction,
// byte-identical files, and the loader's prefix behaviour and mismatch errors.
#include "engine/sals/calibration.h"

#include <Eigen/Dense>
#include <cmath>
#include <fstream>
#include <iterator>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/safetensors.h"
#include "engine/sals/basis.h"
#include "engine/sals/dense_capture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/backend/fixture_models.h"
#include "tests/engine/model/test_files.h"

namespace sals {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;

// Two layers of joint key width 16 (2 KV heads x 8).
ModelConfig SmallConfig() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.hidden_size = 32;
  return c;
}

// Keys k = Q diag(sqrt(var)) z with z ~ N(0, I) and Q a random orthogonal matrix: the
// covariance's eigenvalues are `var`, its eigenvectors Q's columns.
struct KeyDistribution {
  Eigen::MatrixXd q;
  std::vector<double> var;

  KeyDistribution(std::vector<double> variances, uint32_t seed) : var(std::move(variances)) {
    const int d = static_cast<int>(var.size());
    std::mt19937 rng(seed);
    std::normal_distribution<double> normal;
    Eigen::MatrixXd g(d, d);
    for (int i = 0; i < d; ++i) {
      for (int j = 0; j < d; ++j) g(i, j) = normal(rng);
    }
    q = Eigen::HouseholderQR<Eigen::MatrixXd>(g).householderQ();
  }

  // n keys, row-major [n x d].
  std::vector<float> Sample(int64_t n, uint32_t seed) const {
    const int d = static_cast<int>(var.size());
    std::mt19937 rng(seed);
    std::normal_distribution<double> normal;
    std::vector<float> keys(n * d);
    Eigen::VectorXd z(d);
    for (int64_t t = 0; t < n; ++t) {
      for (int i = 0; i < d; ++i) z[i] = normal(rng) * std::sqrt(var[i]);
      const Eigen::VectorXd k = q * z;
      for (int i = 0; i < d; ++i) keys[t * d + i] = static_cast<float>(k[i]);
    }
    return keys;
  }
};

std::vector<double> DecayingVariances(int d) {
  std::vector<double> var(d);
  for (int i = 0; i < d; ++i) var[i] = std::pow(0.7, i);
  return var;
}

KeySpectra Calibrate(const ModelConfig& config, const std::vector<float>& keys, int64_t n) {
  KeyCovariance cov(config);
  for (int l = 0; l < config.num_layers; ++l) cov.AddKeys(l, keys, n);
  auto spectra = cov.Decompose();
  EXPECT_TRUE(spectra.ok()) << spectra.status();
  return spectra.ok() ? *spectra : KeySpectra{};
}

Eigen::MatrixXd Vectors(const LayerSpectrum& s, int d) {
  return Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
      s.eigenvectors.data(), d, d);
}

std::string ReadBytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(RanksFromFractionsTest, RoundsSortsAndDeduplicates) {
  const std::vector<double> paper = {0.25, 0.125, 0.5, 1.0};
  EXPECT_EQ(*RanksFromFractions(24, paper), (std::vector<int>{3, 6, 12, 24}));
  EXPECT_EQ(*RanksFromFractions(64, paper), (std::vector<int>{8, 16, 32, 64}));
  const std::vector<double> tiny = {0.01, 0.02};  // both round to 0 -> at least 1
  EXPECT_EQ(*RanksFromFractions(24, tiny), (std::vector<int>{1}));
}

TEST(RanksFromFractionsTest, RejectsFractionsOutsideUnitInterval) {
  for (double bad : {0.0, -0.25, 1.5, std::nan("")}) {
    const std::vector<double> f = {0.25, bad};
    const auto ranks = RanksFromFractions(64, f);
    EXPECT_EQ(ranks.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(ranks.status().message()), HasSubstr("(0, 1]"));
  }
  EXPECT_FALSE(RanksFromFractions(64, {}).ok());
}

TEST(CalibrationTest, SpectrumIsOrthonormalDescendingWithFixedSigns) {
  const ModelConfig config = SmallConfig();
  const int d = config.kv_width();
  const KeyDistribution dist(DecayingVariances(d), 1);
  const KeySpectra spectra = Calibrate(config, dist.Sample(4000, 2), 4000);
  ASSERT_EQ(spectra.layers.size(), 2u);
  EXPECT_EQ(spectra.tokens, 4000);
  EXPECT_EQ(spectra.width, d);
  for (const LayerSpectrum& s : spectra.layers) {
    const Eigen::MatrixXd u = Vectors(s, d);
    EXPECT_LT((u.transpose() * u - Eigen::MatrixXd::Identity(d, d)).cwiseAbs().maxCoeff(), 1e-12);
    for (int j = 0; j < d; ++j) {
      if (j > 0) {
        EXPECT_GE(s.eigenvalues[j - 1], s.eigenvalues[j]);
      }
      EXPECT_GE(s.eigenvalues[j], 0.0);
      Eigen::Index largest;
      u.col(j).cwiseAbs().maxCoeff(&largest);
      EXPECT_GT(u(largest, j), 0.0) << "column " << j;
      // C u = lambda u with C = sum k k^T, i.e. about n * var.
      EXPECT_NEAR(s.eigenvalues[j] / 4000, dist.var[j], 0.15 * dist.var[j]);
    }
  }
}

TEST(CalibrationTest, EnergiesIncreaseWithRankAndMatchEigenvalueSums) {
  const ModelConfig config = SmallConfig();
  const int d = config.kv_width();
  const KeyDistribution dist(DecayingVariances(d), 3);
  const KeySpectra spectra = Calibrate(config, dist.Sample(2000, 4), 2000);
  TempDir dir;
  const std::vector<int> ranks = {1, 2, 4, 8, 16};
  ASSERT_TRUE(WriteCalibration(dir / "c.safetensors", spectra, ranks).ok());
  auto file = SafetensorsFile::Open(dir / "c.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("ranks"), "1,2,4,8,16");
  EXPECT_EQ((*file)->metadata().at("kv_width"), "16");
  EXPECT_EQ((*file)->metadata().at("num_layers"), "2");
  EXPECT_EQ((*file)->metadata().at("tokens"), "2000");
  EXPECT_EQ((*file)->metadata().at("model"), "LlamaForCausalLM");
  for (int l = 0; l < 2; ++l) {
    const auto eig =
        testing::TensorData<double>(**file, absl::StrCat("layers.", l, ".eigenvalues"));
    ASSERT_EQ(eig.size(), 16u);
    EXPECT_EQ(eig, spectra.layers[l].eigenvalues);
    const double total = std::accumulate(eig.begin(), eig.end(), 0.0);
    double previous = 0.0;
    for (int r : ranks) {
      const std::string name = absl::StrCat("layers.", l, ".rank", r, ".");
      const auto energy = testing::TensorData<double>(**file, name + "energy");
      ASSERT_EQ(energy.size(), 1u);
      EXPECT_DOUBLE_EQ(energy[0], std::accumulate(eig.begin(), eig.begin() + r, 0.0) / total);
      EXPECT_GT(energy[0], previous);
      previous = energy[0];
      const TensorView* basis = (*file)->Find(name + "basis");
      ASSERT_NE(basis, nullptr);
      EXPECT_EQ(basis->dtype_name, "F32");
      EXPECT_EQ(basis->shape, (std::vector<int64_t>{16, r}));
    }
    EXPECT_DOUBLE_EQ(previous, 1.0);
  }
}

TEST(CalibrationTest, PlantedLowRankSubspaceIsRecovered) {
  const ModelConfig config = SmallConfig();
  const int d = config.kv_width(), planted = 4;
  std::vector<double> var(d, 1e-8);  // noise in the other directions
  for (int i = 0; i < planted; ++i) var[i] = 4.0 - i;
  const KeyDistribution dist(var, 5);
  const KeySpectra spectra = Calibrate(config, dist.Sample(3000, 6), 3000);
  const Eigen::MatrixXd truth = dist.q.leftCols(planted);
  for (const LayerSpectrum& s : spectra.layers) {
    const Eigen::MatrixXd u = Vectors(s, d).leftCols(planted);
    // Same subspace: the projectors agree.
    EXPECT_LT((u * u.transpose() - truth * truth.transpose()).norm(), 1e-3);
    EXPECT_GT(s.Energy(planted), 1.0 - 1e-6);
    EXPECT_NEAR(s.Energy(planted - 1), 0.9, 0.02);  // variances 4, 3, 2, 1
  }
}

// Mean squared residual ||k - U U^T k||^2 of `keys` through the top-r eigenvectors.
double MeanResidual(const LayerSpectrum& s, int d, int r, const std::vector<float>& keys) {
  const Eigen::MatrixXd u = Vectors(s, d).leftCols(r);
  const int64_t n = static_cast<int64_t>(keys.size()) / d;
  double sum = 0.0;
  for (int64_t t = 0; t < n; ++t) {
    const Eigen::VectorXd k =
        Eigen::Map<const Eigen::VectorXf>(keys.data() + t * d, d).cast<double>();
    sum += (k - u * (u.transpose() * k)).squaredNorm();
  }
  return sum / n;
}

TEST(CalibrationTest, ReconstructionErrorFollowsTheSpectrum) {
  const ModelConfig config = SmallConfig();
  const int d = config.kv_width();
  const int64_t n = 5000;
  const KeyDistribution dist(DecayingVariances(d), 7);
  const std::vector<float> calib = dist.Sample(n, 8), held_out = dist.Sample(n, 9);
  const KeySpectra spectra = Calibrate(config, calib, n);
  const LayerSpectrum& s = spectra.layers[0];
  double previous = INFINITY;
  for (int r = 1; r <= d; ++r) {
    const double dropped = std::accumulate(s.eigenvalues.begin() + r, s.eigenvalues.end(), 0.0);
    // On the calibration keys exactly: the residual is the dropped part of the spectrum.
    EXPECT_NEAR(MeanResidual(s, d, r, calib), dropped / n, 1e-9 * (1.0 + dropped / n)) << r;
    // On held-out keys roughly, and falling with rank.
    const double held = MeanResidual(s, d, r, held_out);
    if (r < d) {
      EXPECT_NEAR(held, dropped / n, 0.1 * dropped / n) << r;
    }
    EXPECT_LT(held, previous);
    previous = held;
  }
  EXPECT_LT(previous, 1e-9);
}

TEST(CalibrationTest, FilesAreByteIdenticalForTheSameKeys) {
  const ModelConfig config = SmallConfig();
  const KeyDistribution dist(DecayingVariances(config.kv_width()), 10);
  const std::vector<float> keys = dist.Sample(1000, 11);
  TempDir dir;
  const std::vector<int> ranks = {4, 8};
  ASSERT_TRUE(WriteCalibration(dir / "a", Calibrate(config, keys, 1000), ranks).ok());
  ASSERT_TRUE(WriteCalibration(dir / "b", Calibrate(config, keys, 1000), ranks).ok());
  EXPECT_EQ(ReadBytes(dir / "a"), ReadBytes(dir / "b"));
  EXPECT_GT(ReadBytes(dir / "a").size(), 2 * 16 * 12 * sizeof(float));
}

// The whole path the tool takes: a fixture model run densely in chunks, keys from the projection
// observer; twice from scratch gives the same bytes.
TEST(CalibrationTest, FixtureModelCalibrationIsDeterministic) {
  const testing::FixtureModel model = testing::LoadFixtureModel("mistral-gqa");
  std::mt19937 rng(12);
  std::vector<int32_t> tokens(300);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % model.config.vocab_size);
  TempDir dir;
  std::vector<std::string> bytes;
  for (const char* name : {"a", "b"}) {
    KeyCovariance cov(model.config);
    auto capture = DenseCapture::Create(model.config, *model.weights, 128, 48,
                                        [&](int layer, std::span<const float> rows, int64_t n) {
                                          cov.AddProjections(layer, rows, n);
                                        });
    ASSERT_TRUE(capture.ok()) << capture.status();
    for (size_t begin = 0; begin < tokens.size(); begin += 128) {
      const size_t len = std::min<size_t>(128, tokens.size() - begin);
      ASSERT_TRUE((*capture)->Run(std::span(tokens).subspan(begin, len)).ok());
    }
    EXPECT_EQ(cov.tokens(model.config.num_layers - 1), 300);
    auto spectra = cov.Decompose();
    ASSERT_TRUE(spectra.ok()) << spectra.status();
    const std::vector<int> ranks = {3, 6, 24};
    ASSERT_TRUE(WriteCalibration(dir / name, *spectra, ranks).ok());
    bytes.push_back(ReadBytes(dir / name));
  }
  EXPECT_EQ(bytes[0], bytes[1]);
}

TEST(CalibrationTest, DecomposeNeedsKeysInEveryLayer) {
  const ModelConfig config = SmallConfig();
  KeyCovariance none(config);
  EXPECT_EQ(none.Decompose().status().code(), absl::StatusCode::kFailedPrecondition);

  const KeyDistribution dist(DecayingVariances(config.kv_width()), 13);
  const std::vector<float> keys = dist.Sample(10, 14);
  KeyCovariance uneven(config);
  uneven.AddKeys(0, keys, 10);
  uneven.AddKeys(1, keys, 9);
  EXPECT_THAT(std::string(uneven.Decompose().status().message()), HasSubstr("layer 1 saw 9"));

  KeyCovariance zeros(config);
  const std::vector<float> zero_keys(10 * config.kv_width(), 0.0f);
  for (int l = 0; l < 2; ++l) zeros.AddKeys(l, zero_keys, 10);
  EXPECT_THAT(std::string(zeros.Decompose().status().message()), HasSubstr("no usable energy"));
}

class BasisFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const KeyDistribution dist(DecayingVariances(config_.kv_width()), 15);
    spectra_ = Calibrate(config_, dist.Sample(500, 16), 500);
  }
  std::filesystem::path Write(const std::string& name, std::vector<int> ranks) {
    const std::filesystem::path path = dir_ / name;
    EXPECT_TRUE(WriteCalibration(path, spectra_, ranks).ok());
    return path;
  }

  ModelConfig config_ = SmallConfig();
  KeySpectra spectra_;
  TempDir dir_;
};

TEST_F(BasisFileTest, SmallerRankIsThePrefixOfALargerOne) {
  const auto both = Write("both", {2, 4});
  const auto large_only = Write("large", {4});
  auto stored = LoadSalsBasis(both, config_, 2);  // reads the rank-2 tensors
  auto prefix = LoadSalsBasis(large_only, config_, 2);
  ASSERT_TRUE(stored.ok()) << stored.status();
  ASSERT_TRUE(prefix.ok()) << prefix.status();
  EXPECT_EQ(stored->rank, 2);
  EXPECT_EQ(prefix->rank, 2);
  EXPECT_EQ(stored->layers, prefix->layers);
  // And both are the float leading columns of the spectrum's eigenvectors.
  for (int l = 0; l < 2; ++l) {
    for (int i = 0; i < 16; ++i) {
      for (int j = 0; j < 2; ++j) {
        EXPECT_EQ(stored->layers[l][i * 2 + j],
                  static_cast<float>(spectra_.layers[l].eigenvectors[i * 16 + j]));
      }
    }
  }
}

TEST_F(BasisFileTest, MissingRankIsNamed) {
  const auto path = Write("c", {2, 4});
  const auto basis = LoadSalsBasis(path, config_, 5);
  EXPECT_EQ(basis.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(basis.status().message()), HasSubstr("no basis of rank >= 5"));
  EXPECT_EQ(LoadSalsBasis(path, config_, 17).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(BasisFileTest, FileOfAnotherModelIsRejectedWithBothShapes) {
  const auto path = Write("c", {4, 16});
  ModelConfig wider = config_;
  wider.num_kv_heads = 4;
  wider.num_heads = 8;
  const auto basis = LoadSalsBasis(path, wider, 4);
  EXPECT_EQ(basis.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(basis.status().message()),
              HasSubstr("calibrated for a model with kv_width 16 and 2 layers"));
  EXPECT_THAT(std::string(basis.status().message()), HasSubstr("has kv_width 32 and 2 layers"));
  EXPECT_THAT(std::string(basis.status().message()), HasSubstr("run sals-calibrate"));

  ModelConfig deeper = config_;
  deeper.num_layers = 3;
  EXPECT_THAT(std::string(LoadSalsBasis(path, deeper, 4).status().message()),
              HasSubstr("has kv_width 16 and 3 layers"));
}

TEST_F(BasisFileTest, WriteRejectsRanksOutsideTheWidth) {
  const std::vector<int> bad = {0};
  EXPECT_FALSE(WriteCalibration(dir_ / "x", spectra_, bad).ok());
  const std::vector<int> wide = {17};
  EXPECT_FALSE(WriteCalibration(dir_ / "x", spectra_, wide).ok());
}

TEST_F(BasisFileTest, LayerRanksRoundTripAndOldFilesHaveNone) {
  const auto old_file = Write("old", {8, 16});
  auto none = LoadLayerRanks(old_file, config_);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
  const std::vector<int> ranks = {8, 16}, layer_ranks = {16, 8};
  ASSERT_TRUE(WriteCalibration(dir_ / "adaptive", spectra_, ranks, layer_ranks).ok());
  auto loaded = LoadLayerRanks(dir_ / "adaptive", config_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(*loaded, layer_ranks);
  // The bases still load as before.
  EXPECT_TRUE(LoadSalsBasis(dir_ / "adaptive", config_, 8).ok());
  // A layer rank beyond every stored basis, or one per wrong number of layers, is refused.
  const std::vector<int> too_large = {16, 24}, too_few = {8};
  EXPECT_FALSE(WriteCalibration(dir_ / "x", spectra_, ranks, too_large).ok());
  EXPECT_FALSE(WriteCalibration(dir_ / "x", spectra_, ranks, too_few).ok());
}

// The committed calibration files of the fixtures: present for 1/8, 1/4, 1/2 and full rank, for
// the model they sit next to, with orthonormal columns.
class FixtureCalibrationTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureCalibrationTest, LoadsAtEveryStoredRank) {
  const testing::FixtureModel model = testing::LoadFixtureModel(GetParam());
  const int d = model.config.kv_width();
  const std::filesystem::path path = testing::FixtureDir(GetParam()) / kCalibrationFileName;
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const std::vector<double> fractions = {0.125, 0.25, 0.5, 1.0};
  const std::vector<int> ranks = *RanksFromFractions(d, fractions);
  EXPECT_EQ((*file)->metadata().at("ranks"), absl::StrJoin(ranks, ","));
  EXPECT_GT(std::stoll((*file)->metadata().at("tokens")), 10000);
  for (int r : ranks) {
    auto basis = LoadSalsBasis(path, model.config, r);
    ASSERT_TRUE(basis.ok()) << basis.status();
    for (const std::vector<float>& u : basis->layers) {
      const Eigen::MatrixXf m =
          Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
              u.data(), d, r);
      EXPECT_LT((m.transpose() * m - Eigen::MatrixXf::Identity(r, r)).cwiseAbs().maxCoeff(), 1e-5);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureCalibrationTest,
                         ::testing::Values("llama2-mha", "mistral-gqa", "llama31-bpe"));

}  // namespace
}  // namespace sals
