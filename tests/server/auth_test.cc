// Bearer tokens: the file's format and its errors, which client a token is, constant-time
// comparison's answers.
#include "server/auth.h"

#include "gtest/gtest.h"

namespace sals {
namespace {

TEST(AuthTest, ConstantTimeEqualsIsEquality) {
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_TRUE(ConstantTimeEquals("secret", "secret"));
  EXPECT_FALSE(ConstantTimeEquals("secret", "secreT"));
  EXPECT_FALSE(ConstantTimeEquals("secret", "secret2"));
  EXPECT_FALSE(ConstantTimeEquals("secret", ""));
  EXPECT_FALSE(ConstantTimeEquals(std::string("a\0b", 3), std::string("a\0c", 3)));
}

TEST(AuthTest, TokensNameTheirClients) {
  auto auth = TokenAuthenticator::Parse("# clients\nalice s3cret-a\n\n  bob\tt0ken-b  \n", "f");
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_EQ(auth->num_clients(), 2u);
  EXPECT_EQ(*auth->Authenticate("Bearer s3cret-a"), "alice");
  EXPECT_EQ(*auth->Authenticate("bearer t0ken-b"), "bob");
  for (const char* bad : {"", "s3cret-a", "Bearer ", "Bearer s3cret", "Bearer s3cret-a2",
                          "Basic s3cret-a", "Bearer alice"}) {
    const auto who = auth->Authenticate(bad);
    EXPECT_EQ(who.status().code(), absl::StatusCode::kUnauthenticated) << bad;
  }
  EXPECT_EQ(auth->Authenticate("Bearer wrong").status().message().find("wrong"), std::string::npos);
}

TEST(AuthTest, BadFilesAreRefusedNamingTheLine) {
  auto one_field = TokenAuthenticator::Parse("alice\n", "tokens.txt");
  EXPECT_NE(one_field.status().message().find("tokens.txt:1"), std::string::npos)
      << one_field.status();
  auto twice = TokenAuthenticator::Parse("a x\na y\n", "tokens.txt");
  EXPECT_NE(twice.status().message().find("tokens.txt:2"), std::string::npos) << twice.status();
  EXPECT_FALSE(TokenAuthenticator::Parse("# nothing\n", "tokens.txt").ok());
  EXPECT_EQ(TokenAuthenticator::FromFile("/nonexistent/tokens").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace sals
