// swift-tools-version:5.7
// The Swift binding of libagentlm: a C module over include/agentlm.h and small Swift classes on it.
// Link against the library built by cargo or CMake, e.g.
//   swift build -Xlinker -L<dir with libagentlm.so/.dylib>
import PackageDescription

let package = Package(
    name: "AgentLM",
    products: [.library(name: "AgentLM", targets: ["AgentLM"])],
    targets: [
        .target(name: "CAgentLM", path: "Sources/CAgentLM"),
        .target(name: "AgentLM", dependencies: ["CAgentLM"], path: "Sources/AgentLM"),
    ]
)
