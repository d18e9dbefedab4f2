// C++ side of the cxx bridge test: loads the real model through the Rust API and generates.
#include "agentlm-cxx/tests/bridge_test.h"
#include "agentlm-cxx/src/lib.rs.h"

#include <cstdio>
#include <string>

namespace agentlm {
namespace bridge_test {

int32_t run_bridge_test(rust::Str model_path) {
  int passed = 0, failed = 0;
  auto check = [&](bool ok, const char* what) {
    if (ok) {
      passed++;
    } else {
      failed++;
      std::fprintf(stderr, "FAIL %s\n", what);
    }
  };
  try {
    bridge::load_model("/nonexistent/model.gguf");
    check(false, "loading a missing file throws");
  } catch (const rust::Error& e) {
    check(std::string(e.what()).find("/nonexistent/model.gguf") != std::string::npos, "error names the file");
  }
  rust::Box<bridge::Model> model = bridge::load_model(model_path);
  check(model->vocab_size() == 49152, "vocab size");
  rust::Vec<bridge::ChatMessage> msgs;
  msgs.push_back(bridge::ChatMessage{"user", "What is the capital of France? Answer in one sentence."});
  rust::String prompt = model->apply_chat_template(msgs);
  check(std::string(prompt).find("<|im_start|>assistant\n") != std::string::npos, "chat template");

  rust::Box<bridge::Session> s = model->new_session(256);
  s->append_text(std::string(prompt));
  rust::Box<bridge::Session> f = s->fork();
  bridge::GenerateOptions o = bridge::default_generate_options();
  o.max_tokens = 8;
  o.ignore_eos = true;
  bridge::GenerateResult r = s->generate(o);
  check(r.ids.size() == 8 && std::string(r.finish) == "length", "8 tokens, finish=length");
  check(std::string(r.text).find("Paris") != std::string::npos, "answers Paris");
  bridge::GenerateResult r2 = f->generate(o);
  check(std::string(r2.text) == std::string(r.text), "fork continues identically");
  rust::Vec<uint32_t> ids = model->tokenize("<|im_end|>", false);
  check(ids.size() > 1, "untrusted special text is plain");
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed;
}

}  // namespace bridge_test
}  // namespace agentlm
