module libagentlm.dev/agentlm

go 1.19
