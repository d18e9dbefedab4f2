// Swift over the C ABI. Classes free their handle in deinit; a Session is an actor (one caller at a
// time, as the C API requires); tokens arrive as an AsyncThrowingStream; tools are Swift closures
// reached from C through a @convention(c) trampoline and a retained box passed as user data.
// Compile-untested: no Swift toolchain runs on the machines this was written on (see README.md).
import CAgentLM

public struct AgentLMError: Error, CustomStringConvertible {
    public let status: Int32
    public let message: String
    public var description: String { "agentlm: \(message) (status \(status))" }
}

/// Calls `body` with an error slot and turns a failing status into a thrown AgentLMError.
@discardableResult
func call(_ body: (UnsafeMutablePointer<OpaquePointer?>) -> agentlm_status) throws -> agentlm_status {
    var err: OpaquePointer? = nil
    let status = body(&err)
    defer { agentlm_error_free(err) }
    if status < 0 {
        let message = err.flatMap { agentlm_error_message($0) }.map { String(cString: $0) } ?? ""
        throw AgentLMError(status: status, message: message)
    }
    return status
}

public final class Model: @unchecked Sendable {
    let handle: OpaquePointer

    /// Loads a GGUF file or a Hugging Face model directory on the CPU.
    public init(path: String) throws {
        var out: OpaquePointer? = nil
        try call { err in
            path.withCString { agentlm_model_load($0, strlen($0), nil, &out, err) }
        }
        handle = out!
    }

    deinit { agentlm_model_free(handle) }

    public var contextLength: Int { Int(agentlm_model_context_length(handle)) }

    public func session(capacity: Int = 0) throws -> Session {
        var params = agentlm_session_params_default()
        params.capacity = UInt32(capacity)
        var out: OpaquePointer? = nil
        try call { agentlm_session_new(handle, &params, &out, $0) }
        return Session(handle: out!)
    }

    public func loadAdapter(directory: String) throws -> Adapter {
        var out: OpaquePointer? = nil
        try call { err in directory.withCString { agentlm_adapter_load(handle, $0, strlen($0), &out, err) } }
        return Adapter(handle: out!)
    }
}

public final class Adapter: @unchecked Sendable {
    let handle: OpaquePointer
    init(handle: OpaquePointer) { self.handle = handle }
    deinit { agentlm_adapter_free(handle) }
}

public actor Session {
    let handle: OpaquePointer
    init(handle: OpaquePointer) { self.handle = handle }
    deinit { agentlm_session_free(handle) }

    public func append(_ text: String) throws {
        try call { err in text.withCString { agentlm_session_append_text(handle, $0, strlen($0), err) } }
    }

    public func setAdapter(_ adapter: Adapter?, scale: Float = 1) throws {
        try call { agentlm_session_set_adapter(handle, adapter?.handle, scale, $0) }
    }

    /// Requests cancellation of the running generation (safe from any task: the C call is thread-safe).
    public nonisolated func cancel() { agentlm_session_cancel(handle) }

    /// Generates up to `maxTokens` tokens, greedy unless `temperature > 0`, streaming their text.
    /// Cancelling the consuming task cancels the generation.
    public func generate(maxTokens: Int = 256, temperature: Float = 0) -> AsyncThrowingStream<String, Error> {
        AsyncThrowingStream { continuation in
            var params = agentlm_generate_params_default()
            params.max_tokens = UInt32(maxTokens)
            params.temperature = temperature
            continuation.onTermination = { [handle] _ in agentlm_session_cancel(handle) }
            do {
                try call { agentlm_session_begin(handle, &params, $0) }
                while true {
                    var token = agentlm_token()
                    let status = try call { agentlm_session_next_token(handle, &token, $0) }
                    if token.text_len > 0 {
                        continuation.yield(String(cString: token.text))
                    }
                    if status != 0 { break }  // AGENTLM_STATUS_DONE or CANCELLED
                }
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
    }
}

/// A tool the agent may call: input in, observation out.
public typealias Tool = (String) throws -> String

final class ToolBox {
    let run: Tool
    init(_ run: @escaping Tool) { self.run = run }
}

/// C calls this for every tool action; `user` is a retained ToolBox.
private let toolTrampoline: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, Int, OpaquePointer?) -> Bool = {
    user, input, length, result in
    let box = Unmanaged<ToolBox>.fromOpaque(user!).takeUnretainedValue()
    let text = String(decoding: UnsafeRawBufferPointer(start: input, count: length), as: UTF8.self)
    let observation: String
    var ok = true
    do { observation = try box.run(text) } catch {
        observation = "Tool error: \(error)"
        ok = false
    }
    observation.withCString { _ = agentlm_tool_result_set(result, $0, strlen($0)) }
    return ok
}

/// Releases the ToolBox when the agent is freed.
private let releaseTrampoline: @convention(c) (UnsafeMutableRawPointer?) -> Void = { user in
    Unmanaged<ToolBox>.fromOpaque(user!).release()
}

public final class Agent {
    let handle: OpaquePointer

    public init(model: Model, instructions: String, task: String, constrained: Bool = true) throws {
        var params = agentlm_agent_params_default()
        params.constrained = constrained
        var out: OpaquePointer? = nil
        try call { err in
            instructions.withCString { i in
                task.withCString { t in agentlm_agent_new(model.handle, &params, i, strlen(i), t, strlen(t), &out, err) }
            }
        }
        handle = out!
    }

    deinit { agentlm_agent_free(handle) }

    public func addTool(name: String, description: String, _ run: @escaping Tool) throws {
        let box = Unmanaged.passRetained(ToolBox(run)).toOpaque()
        // The library calls releaseTrampoline exactly once, also when this call fails.
        try call { err in
            name.withCString { n in
                description.withCString { d in
                    agentlm_agent_add_tool(handle, n, strlen(n), d, strlen(d), nil, 0, toolTrampoline, box, releaseTrampoline, err)
                }
            }
        }
    }

    /// Sets the complete actions the next replies may take (ALFWorld: "go to cabinet 1"); the action is
    /// decoded from exactly these strings. It stays until replaced; an empty list clears it.
    public func setAdmissible(_ actions: [String]) throws {
        let copies = actions.map { strdup($0)! }
        defer { copies.forEach { free($0) } }
        var list = copies.map { agentlm_str(ptr: UnsafePointer($0), len: strlen($0)) }
        try call { err in list.withUnsafeMutableBufferPointer { agentlm_agent_set_admissible(handle, $0.baseAddress, $0.count, err) } }
    }

    /// One reply; returns the tool called (empty for other kinds) and its observation.
    public func step() throws -> (kind: Int32, tool: String, input: String, observation: String) {
        var result = agentlm_agent_step_result()
        try call { agentlm_agent_step(handle, 0, 0, &result, $0) }
        func str(_ s: agentlm_str) -> String {
            s.ptr.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: s.len), as: UTF8.self) } ?? ""
        }
        return (result.kind, str(result.tool), str(result.input), str(result.observation))
    }

    public var isFinished: Bool { agentlm_agent_is_finished(handle) }
}
