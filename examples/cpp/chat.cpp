// Streaming chat through the C++ wrapper (include/agentlm.hpp).
//
//   chat_cpp MODEL [PROMPT [MAX_TOKENS]]
//
// Same output as examples/c/chat and `examples/generate --chat --greedy`.
#include "agentlm.hpp"

#include <cstdio>
#include <iostream>
#include <string>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: chat_cpp MODEL [PROMPT [MAX_TOKENS]]\n";
    return 2;
  }
  try {
    agentlm::Model model(argv[1]);
    agentlm::GenerateOptions options;  // greedy
    if (argc > 3) options.max_tokens = static_cast<uint32_t>(std::stoul(argv[3]));
    std::vector<agentlm::Message> history;
    std::string line;
    bool once = argc > 2;
    while (once || std::getline(std::cin, line)) {
      history.push_back({"user", once ? std::string(argv[2]) : line});
      agentlm::Session session = model.session();
      session.sync_chat(history);  // contents as plain text: a user's <|im_end|> stays text
      auto g = session.generate(options, [](uint32_t, std::string_view text) {
        std::fwrite(text.data(), 1, text.size(), stdout);
        std::fflush(stdout);
        return true;
      });
      std::printf("\n");
      std::fprintf(stderr, "[%u prompt tokens, %.1f tok/s prefill; %u new tokens, %.1f tok/s decode]\n",
                   g.stats.prefill_tokens, g.stats.prefill_tokens_per_s, g.stats.n_tokens,
                   g.stats.decode_tokens_per_s);
      history.push_back({"assistant", g.text});
      if (once) break;
    }
  } catch (const agentlm::Error& e) {
    std::cerr << "error: " << e.what() << " (status " << e.status() << ")\n";
    return 1;
  }
  return 0;
}
