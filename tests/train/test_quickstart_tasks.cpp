// The compositional sequence tasks: skills, composition, sequence layout, held-out split,
// loss and exact match.
#include <gtest/gtest.h>

#include <set>

#include "quickstart/tasks_synthetic.h"

using namespace modula::train;

TEST(QuickstartTasks, SkillsAndTheirComposition) {
  std::vector<int64_t> x{3, 0, 7, 3};
  EXPECT_EQ(apply_skill(Skill::Reverse, x, 8), (std::vector<int64_t>{3, 7, 0, 3}));
  EXPECT_EQ(apply_skill(Skill::Sort, x, 8), (std::vector<int64_t>{0, 3, 3, 7}));
  EXPECT_EQ(apply_skill(Skill::Shift, x, 8), (std::vector<int64_t>{4, 1, 0, 4}));  // 7 wraps to 0
  EXPECT_EQ(apply_skill(Skill::Duplicate, {1, 2}, 8), (std::vector<int64_t>{1, 1, 2, 2}));
  // Left to right: shift(reverse(x)), duplicate(sort(x)).
  EXPECT_EQ(apply_task(parse_task("reverse+shift"), x, 8), (std::vector<int64_t>{4, 0, 1, 4}));
  EXPECT_EQ(apply_task(parse_task("sort+duplicate"), {2, 1}, 8), (std::vector<int64_t>{1, 1, 2, 2}));
}

TEST(QuickstartTasks, BadNamesThrowNamingThePart) {
  try {
    parse_task("reverse+flip");
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'flip'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_task("reverse+"), std::invalid_argument);
  EXPECT_THROW(parse_task(""), std::invalid_argument);
  EXPECT_THROW(SequenceTaskOptions().min_length(5).max_length(3).validate(), std::invalid_argument);
}

TEST(QuickstartTasks, SequenceLayoutAndLabels) {
  auto tasks = parse_tasks({"reverse", "sort+duplicate"});
  TaskSampler sampler(SequenceTaskOptions().min_length(2).max_length(3), 1);
  const auto& v = sampler.vocab();
  for (bool marker : {true, false}) {
    auto b = sampler.sample(tasks, {0, 1}, 6, Split::Train, marker);
    ASSERT_EQ(b.input_ids.size(1), max_sequence_length(tasks, sampler.options(), marker));
    for (int64_t r = 0; r < 6; ++r) {
      int64_t k = b.task_ids[r].item<int64_t>();
      EXPECT_EQ(k, r % 2);
      auto ids = b.input_ids[r];
      EXPECT_EQ(ids[0].item<int64_t>(), SymbolVocab::bos);
      int64_t pos = 1;
      if (marker)
        for (Skill s : tasks[k].skills) EXPECT_EQ(ids[pos++].item<int64_t>(), v.marker(s));
      std::vector<int64_t> x;
      while (ids[pos].item<int64_t>() != SymbolVocab::sep) x.push_back(ids[pos++].item<int64_t>() - v.symbol(0));
      auto y = apply_task(tasks[k], x, v.num_symbols);
      // Labels: position t predicts token t+1 over the answer and EOS, -100 elsewhere.
      for (int64_t t = 0; t < ids.size(0); ++t) {
        int64_t label = b.labels[r][t].item<int64_t>();
        int64_t answer_pos = t - pos;  // index into y of the token predicted at t
        if (answer_pos >= 0 && answer_pos < static_cast<int64_t>(y.size()))
          EXPECT_EQ(label, v.symbol(y[answer_pos]));
        else if (answer_pos == static_cast<int64_t>(y.size()))
          EXPECT_EQ(label, SymbolVocab::eos);
        else
          EXPECT_EQ(label, -100);
      }
    }
  }
}

TEST(QuickstartTasks, HeldOutInputsNeverOccurInTraining) {
  auto tasks = parse_tasks({"reverse"});
  SequenceTaskOptions o = SequenceTaskOptions().num_symbols(3).min_length(1).max_length(3).heldout_every(4);
  auto inputs = [&](Split split) {
    TaskSampler s(o, 5);
    auto b = s.sample(tasks, {0}, 3000, split, false);
    std::set<std::vector<int64_t>> seen;
    for (int64_t r = 0; r < b.input_ids.size(0); ++r) {
      std::vector<int64_t> x;
      for (int64_t t = 1; b.input_ids[r][t].item<int64_t>() != SymbolVocab::sep; ++t)
        x.push_back(b.input_ids[r][t].item<int64_t>());
      seen.insert(x);
    }
    return seen;
  };
  auto train = inputs(Split::Train), heldout = inputs(Split::Heldout);
  EXPECT_GT(heldout.size(), 1u);
  EXPECT_GT(train.size(), heldout.size());
  for (const auto& x : heldout) EXPECT_EQ(train.count(x), 0u);
  EXPECT_EQ(train.size() + heldout.size(), 3u + 9u + 27u);  // the whole input space, split in two
}

TEST(QuickstartTasks, ExactMatchNeedsEveryAnswerToken) {
  auto labels = torch::tensor({-100, 5, 6, -100, -100, 5, 6, -100}, torch::kLong).reshape({2, 4});
  auto logits = torch::zeros({2, 4, 8});
  logits.index_put_({0, 1, 5}, 1.0);
  logits.index_put_({0, 2, 6}, 1.0);
  logits.index_put_({1, 1, 5}, 1.0);
  logits.index_put_({1, 2, 7}, 1.0);  // one wrong token
  logits.index_put_({1, 0, 1}, 9.0);  // positions outside the answer do not count
  auto em = exact_match(logits, labels);
  EXPECT_TRUE(em[0].item<bool>());
  EXPECT_FALSE(em[1].item<bool>());
  // Cross entropy only over the answer positions.
  auto loss = answer_loss(logits, labels).item<double>();
  auto expected =
      torch::cross_entropy_loss(logits.index({torch::indexing::Slice(), torch::indexing::Slice(1, 3)}).reshape({4, 8}),
                                torch::tensor({5, 6, 5, 6}, torch::kLong))
          .item<double>();
  EXPECT_NEAR(loss, expected, 1e-6);
}
