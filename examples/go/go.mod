module libagentlm.dev/agentlm/examples/go

go 1.19

require libagentlm.dev/agentlm v0.0.0

replace libagentlm.dev/agentlm => ../../bindings/go
