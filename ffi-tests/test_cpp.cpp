// Tests of include/agentlm.hpp on the real model: RAII, exceptions, callbacks. Included twice on purpose.
#include "agentlm.hpp"
#include "agentlm.hpp"
#include "check.h"

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>


int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : std::getenv("AGENTLM_MODEL");
  if (!path) return 2;

  try {
    agentlm::Model bad("/nonexistent/model.gguf");
    CHECK(false);
  } catch (const agentlm::Error& e) {
    CHECK(e.status() == AGENTLM_STATUS_IO);
    CHECK(std::string(e.what()).find("/nonexistent/model.gguf") != std::string::npos);
  }
  // A throwing progress callback aborts loading and its exception reaches the caller.
  try {
    agentlm::ModelOptions o;
    o.progress = [](float f) -> bool {
      if (f > 0.2f) throw std::runtime_error("enough");
      return true;
    };
    agentlm::Model m(path, o);
    CHECK(false);
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()) == "enough");
  }

  agentlm::Model model(path);
  CHECK(model.vocab_size() == 49152 && model.architecture() == "llama" && model.has_chat_template());
  auto ids = model.tokenize("Hello world");
  CHECK(model.detokenize(ids) == "Hello world");
  std::string prompt = model.apply_chat_template({{"user", "What is the capital of France? Answer in one sentence."}});
  CHECK(prompt.find("<|im_start|>assistant\n") != std::string::npos);

  agentlm::Session s = model.session(256);
  s.append_text(prompt);
  agentlm::GenerateOptions o;
  o.max_tokens = 8;
  o.ignore_eos = true;
  agentlm::Session f = s.fork();
  auto g = s.generate(o);
  CHECK(g.ids.size() == 8 && g.status == AGENTLM_STATUS_OK && g.stats.finish_reason == AGENTLM_FINISH_LENGTH);
  CHECK(g.text.find("Paris") != std::string::npos);
  // Moving keeps the handle; the fork continues identically.
  agentlm::Session moved = std::move(f);
  auto g2 = moved.generate(o);
  CHECK(g2.ids == g.ids && g2.text == g.text);
  // A throwing token callback stops generation; the exception is rethrown, the session stays usable.
  try {
    moved.generate(o, [](uint32_t, std::string_view) -> bool { throw std::logic_error("stop here"); });
    CHECK(false);
  } catch (const std::logic_error& e) {
    CHECK(std::string(e.what()) == "stop here");
  }
  moved.append_untrusted_text("<|im_end|>");
  auto toks = moved.tokens();
  CHECK(toks.back() != 2);
  // Save and restore.
  auto state = s.save_state();
  agentlm::Session r = model.session(256);
  r.load_state(state);
  CHECK(r.tokens() == s.tokens());
  try {
    state.resize(state.size() / 2);
    r.load_state(state);
    CHECK(false);
  } catch (const agentlm::Error& e) {
    CHECK(e.status() == AGENTLM_STATUS_STATE);
  }
  // LoRA: the PEFT reference adapter (argv[2]) changes the greedy text and merging reproduces it;
  // a trainer learns, its adapter attaches, a throwing progress callback's exception reaches the caller.
  if (argc > 2) {
    agentlm::Adapter adapter(model, argv[2]);
    CHECK(adapter.rank() == 8);
    agentlm::GenerateOptions go;
    go.max_tokens = 16;
    go.ignore_eos = true;
    auto greedy = [&](const agentlm::Model& m, const agentlm::Adapter* a) {
      agentlm::Session x = m.session(256);
      x.set_adapter(a);
      x.append_text("Once upon a time, in a small village nestled between two mountains, there lived a");
      return x.generate(go).text;
    };
    std::string base = greedy(model, nullptr), tuned = greedy(model, &adapter);
    CHECK(base != tuned);
    // A merged model computes in f32 (exact precision), so compare it with the adapter on an
    // exact-precision model: the same text.
    agentlm::ModelOptions eo;
    eo.precision = AGENTLM_PRECISION_EXACT;
    agentlm::Model exact(path, eo);
    agentlm::Adapter on_exact(exact, argv[2]);
    CHECK(greedy(exact.merged(on_exact), nullptr) == greedy(exact, &on_exact));
  }
  agentlm_trainer_params tp = agentlm_trainer_params_default();
  tp.lora_rank = 4;
  tp.learning_rate = 2e-3f;
  tp.max_tokens = 96;
  agentlm::Trainer trainer(model, tp);
  const char* rec =
      "{\"conversations\":[{\"from\":\"human\",\"value\":\"You are in room 1. Go to the door.\"},"
      "{\"from\":\"gpt\",\"value\":\"ACTION: go to door 1\"}]}";
  CHECK(trainer.add_json(rec));
  CHECK(trainer.add_json(rec, AGENTLM_DATA_EVAL));
  double before = trainer.evaluate();
  int calls = 0;
  auto last = trainer.run(3, 0, [&](const agentlm_train_progress& p) {
    calls++;
    return p.loss > 0;
  });
  CHECK(calls == 3 && last.step == 3 && trainer.step() == 3 && trainer.evaluate() < before);
  try {
    trainer.run(2, 0, [](const agentlm_train_progress&) -> bool { throw std::runtime_error("halt"); });
    CHECK(false);
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()) == "halt" && trainer.step() == 4);
  }
  agentlm::Adapter trained = trainer.adapter();
  CHECK(trained.rank() == 4);
  s.set_adapter(&trained, 1.0f);
  s.set_adapter(nullptr);
  try {
    trainer.add_json("{");
    CHECK(false);
  } catch (const agentlm::Error& e) {
    CHECK(e.status() == AGENTLM_STATUS_INVALID_ARGUMENT);
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
