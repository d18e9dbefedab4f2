package agentlm

// #include <stdlib.h>
// #include "agentlm.h"
// extern void *agentlm_go_handle(uintptr_t h);
// extern agentlm_tool_fn agentlm_go_tool_fn(void);
// extern agentlm_free_fn agentlm_go_release_fn(void);
import "C"

import (
	"context"
	"runtime"
	"runtime/cgo"
	"time"
	"unsafe"
)

// ActionFormat is how the model writes actions (agentlm_action_format).
type ActionFormat int32

// Action formats.
const (
	FormatALFWorld ActionFormat = 0
	FormatOS       ActionFormat = 1
	FormatDB       ActionFormat = 2
	FormatWebShop  ActionFormat = 3
	FormatKG       ActionFormat = 4
	FormatMind2Web ActionFormat = 5
	FormatReAct    ActionFormat = 6
	FormatJSON     ActionFormat = 7
)

// StepKind says what a step produced (agentlm_step_kind).
type StepKind int32

// Step kinds.
const (
	StepAction    StepKind = 1 // a tool call (run by its Go function when it has one)
	StepFinal     StepKind = 2 // the final answer; the episode is over
	StepInvalid   StepKind = 3 // not a valid action; the format's feedback was added, step again
	StepPending   StepKind = 4 // the token or time budget ran out mid-reply; step again
	StepLimit     StepKind = 5 // the step limit was reached; the episode is over
	StepCancelled StepKind = 6 // cancelled mid-reply; the next step starts the reply over
	StepRepeatLimit StepKind = 7 // the same action repeat_limit times in a row; the episode is over
)

// AgentParams configure an agent; start from DefaultAgentParams.
type AgentParams struct {
	Format              ActionFormat
	ChatTemplate        int // agentlm_chat_template; 0: the model's own
	MaxSteps            int
	MaxTokensPerStep    int
	MaxObservationChars int
	Temperature         float32
	TopK                int
	TopP                float32
	Seed                uint64
	Constrained         bool // every action must name a registered tool
	Capacity            int  // KV cache tokens; 0: the model's context
}

// DefaultAgentParams: ALFWorld format, the model's template, 30 steps, 128 tokens per reply, greedy.
func DefaultAgentParams() AgentParams {
	d := C.agentlm_agent_params_default()
	return AgentParams{
		Format: ActionFormat(d.format), ChatTemplate: int(d.chat_template), MaxSteps: int(d.max_steps),
		MaxTokensPerStep: int(d.max_tokens_per_step), MaxObservationChars: int(d.max_observation_chars),
		Temperature: float32(d.temperature), TopK: int(d.top_k), TopP: float32(d.top_p), Seed: uint64(d.seed),
		Constrained: bool(d.constrained), Capacity: int(d.capacity),
	}
}

// StepResult is what a step produced. Observation is set when a Go tool ran.
type StepResult struct {
	Kind                                            StepKind
	Step, Tokens                                    int
	Repeated                                        bool
	Text, Thought, Tool, Input, Answer, Observation string
	// Action is the action as written after the format's prefix (with admissible actions set: the
	// admissible string chosen); Accepted is 1 when the tool reported it accepted, 0 refused, -1 unknown.
	Action   string
	Accepted int
}

// ToolFunc runs a tool: the action's input in, the observation out. An error (or a panic) becomes a
// "Tool error: ..." observation that the model sees.
type ToolFunc func(input string) (string, error)

type goTool struct{ fn ToolFunc }

// Agent steps a ReAct agent on a model. One goroutine at a time; Cancel from any goroutine.
type Agent struct {
	h handle[*C.agentlm_agent]
}

// NewAgent makes an agent for task, told instructions (the task family's rules).
func (m *Model) NewAgent(params AgentParams, instructions, task string) (*Agent, error) {
	var out *C.agentlm_agent
	err := m.use(func(p *C.agentlm_model) error {
		cp := C.agentlm_agent_params_default()
		cp.format = C.int32_t(params.Format)
		cp.chat_template = C.int32_t(params.ChatTemplate)
		cp.max_steps = C.uint32_t(params.MaxSteps)
		cp.max_tokens_per_step = C.uint32_t(params.MaxTokensPerStep)
		cp.max_observation_chars = C.uint32_t(params.MaxObservationChars)
		cp.temperature = C.float(params.Temperature)
		cp.top_k = C.uint32_t(params.TopK)
		cp.top_p = C.float(params.TopP)
		cp.seed = C.uint64_t(params.Seed)
		cp.constrained = C.bool(params.Constrained)
		cp.capacity = C.uint32_t(params.Capacity)
		i, ni := cstr(instructions)
		t, nt := cstr(task)
		var cerr *C.agentlm_error
		st := C.agentlm_agent_new(p, &cp, i, ni, t, nt, &out, &cerr)
		runtime.KeepAlive(instructions)
		runtime.KeepAlive(task)
		return check("NewAgent", st, cerr)
	})
	if err != nil {
		return nil, err
	}
	a := &Agent{h: handle[*C.agentlm_agent]{ptr: out, free: func(p *C.agentlm_agent) { C.agentlm_agent_free(p) }}}
	runtime.SetFinalizer(a, (*Agent).Close)
	return a, nil
}

// Close frees the agent (and its tools' handles). Safe to call more than once.
func (a *Agent) Close() error {
	a.h.close()
	runtime.SetFinalizer(a, nil)
	return nil
}

func (a *Agent) use(f func(p *C.agentlm_agent) error) error {
	return a.h.use(f)
}

// AddTool registers a tool (before the first step). fn may be nil: then the host answers actions with
// SubmitObservation. parametersJSON is a JSON schema of its arguments (may be empty).
func (a *Agent) AddTool(name, description, parametersJSON string, fn ToolFunc) error {
	return a.use(func(p *C.agentlm_agent) error {
		n, nn := cstr(name)
		d, nd := cstr(description)
		j, nj := cstr(parametersJSON)
		var cerr *C.agentlm_error
		var st C.agentlm_status
		if fn == nil {
			st = C.agentlm_agent_add_tool(p, n, nn, d, nd, j, nj, nil, nil, nil, &cerr)
		} else {
			// The library releases the handle exactly once, also when registration fails.
			h := cgo.NewHandle(&goTool{fn: fn})
			st = C.agentlm_agent_add_tool(p, n, nn, d, nd, j, nj, C.agentlm_go_tool_fn(),
				C.agentlm_go_handle(C.uintptr_t(h)), C.agentlm_go_release_fn(), &cerr)
		}
		runtime.KeepAlive(name)
		runtime.KeepAlive(description)
		runtime.KeepAlive(parametersJSON)
		return check("AddTool", st, cerr)
	})
}

// Step generates the next reply (at most maxTokens tokens or maxTime when not zero, then StepPending)
// and runs the tool it names. When ctx is done the reply is cancelled (StepCancelled) and ctx.Err()
// is returned.
func (a *Agent) Step(ctx context.Context, maxTokens int, maxTime time.Duration) (StepResult, error) {
	var r StepResult
	err := a.use(func(p *C.agentlm_agent) error {
		var out C.agentlm_agent_step_result
		var cerr *C.agentlm_error
		stop := watch(ctx, func() { C.agentlm_agent_cancel(p) })
		st := C.agentlm_agent_step(p, C.uint32_t(maxTokens), C.uint32_t(maxTime.Milliseconds()), &out, &cerr)
		stop()
		if err := check("Step", st, cerr); err != nil {
			return err
		}
		r = StepResult{
			Kind: StepKind(out.kind), Step: int(out.step), Tokens: int(out.tokens), Repeated: bool(out.repeated),
			Text: gostr(out.text), Thought: gostr(out.thought), Tool: gostr(out.tool), Input: gostr(out.input),
			Answer: gostr(out.answer), Observation: gostr(out.observation),
			Action: gostr(out.action), Accepted: int(out.accepted),
		}
		if r.Kind == StepCancelled && ctx.Err() != nil {
			return ctx.Err()
		}
		return nil
	})
	return r, err
}

// SetAdmissible sets the complete actions the next replies may take (ALFWorld: "go to cabinet 1"):
// the action is decoded from exactly these strings. It stays until replaced; no actions clear it.
func (a *Agent) SetAdmissible(actions []string) error {
	return a.use(func(p *C.agentlm_agent) error {
		list, free := cstrs(actions)
		defer free()
		var cerr *C.agentlm_error
		return check("SetAdmissible", C.agentlm_agent_set_admissible(p, list, C.size_t(len(actions)), &cerr), cerr)
	})
}

// SetToolValues sets the values a tool's argument may take in constrained mode, from the next reply
// on (e.g. the places seen so far for "go to"). param "" is the tool's input as line formats write it,
// or its only parameter in JSON calls; otherwise a parameter of its JSON schema. No values clear them.
func (a *Agent) SetToolValues(tool, param string, values []string) error {
	return a.use(func(p *C.agentlm_agent) error {
		list, free := cstrs(values)
		defer free()
		t, tn := cstr(tool)
		pp, pn := cstr(param)
		var cerr *C.agentlm_error
		st := C.agentlm_agent_set_tool_values(p, t, tn, pp, pn, list, C.size_t(len(values)), &cerr)
		runtime.KeepAlive(tool)
		runtime.KeepAlive(param)
		return check("SetToolValues", st, cerr)
	})
}

// cstrs copies strings into a C array of agentlm_str (cgo forbids passing Go pointers to Go
// pointers); call the returned function to release it. NULL for no strings.
func cstrs(strs []string) (*C.agentlm_str, func()) {
	if len(strs) == 0 {
		return nil, func() {}
	}
	list := (*C.agentlm_str)(C.malloc(C.size_t(len(strs)) * C.size_t(unsafe.Sizeof(C.agentlm_str{}))))
	items := unsafe.Slice(list, len(strs))
	for i, s := range strs {
		items[i].ptr = C.CString(s)
		items[i].len = C.size_t(len(s))
	}
	return list, func() {
		for i := range items {
			C.free(unsafe.Pointer(items[i].ptr))
		}
		C.free(unsafe.Pointer(list))
	}
}

// SubmitResult answers the last action like SubmitObservation, with the environment's verdict.
func (a *Agent) SubmitResult(text string, accepted bool) error {
	return a.use(func(p *C.agentlm_agent) error {
		t, n := cstr(text)
		var cerr *C.agentlm_error
		st := C.agentlm_agent_submit_result(p, t, n, C.bool(accepted), &cerr)
		runtime.KeepAlive(text)
		return check("SubmitResult", st, cerr)
	})
}

// SubmitObservation answers the last action of a tool without a Go function.
func (a *Agent) SubmitObservation(text string) error {
	return a.use(func(p *C.agentlm_agent) error {
		t, n := cstr(text)
		var cerr *C.agentlm_error
		st := C.agentlm_agent_submit_observation(p, t, n, &cerr)
		runtime.KeepAlive(text)
		return check("SubmitObservation", st, cerr)
	})
}

// Cancel stops the reply being generated (or the next one). Any goroutine.
func (a *Agent) Cancel() {
	_ = a.use(func(p *C.agentlm_agent) error { C.agentlm_agent_cancel(p); return nil })
}

// Finished reports whether the episode is over.
func (a *Agent) Finished() bool {
	done := false
	_ = a.use(func(p *C.agentlm_agent) error { done = bool(C.agentlm_agent_is_finished(p)); return nil })
	return done
}

// SetOutcome records the episode's reward and outcome in its trajectory.
func (a *Agent) SetOutcome(reward float64, outcome string) error {
	return a.use(func(p *C.agentlm_agent) error {
		o, n := cstr(outcome)
		var cerr *C.agentlm_error
		st := C.agentlm_agent_set_outcome(p, C.double(reward), o, n, &cerr)
		runtime.KeepAlive(outcome)
		return check("SetOutcome", st, cerr)
	})
}

// SetAdapter hot-swaps a LoRA adapter (nil detaches) between steps.
func (a *Agent) SetAdapter(ad *Adapter, scale float32) error {
	return a.use(func(p *C.agentlm_agent) error {
		return ad.use(func(ap *C.agentlm_adapter) error {
			var cerr *C.agentlm_error
			return check("SetAdapter", C.agentlm_agent_set_adapter(p, ap, C.float(scale), &cerr), cerr)
		})
	})
}

// TrajectoryJSON is the episode in AgentInstruct's schema.
func (a *Agent) TrajectoryJSON() (string, error) {
	out := ""
	err := a.use(func(p *C.agentlm_agent) error {
		var needed C.size_t
		var cerr *C.agentlm_error
		st := C.agentlm_agent_trajectory_json(p, nil, 0, &needed, &cerr)
		if st != C.AGENTLM_STATUS_BUFFER_TOO_SMALL {
			return check("TrajectoryJSON", st, cerr)
		}
		C.agentlm_error_free(cerr)
		buf := (*C.char)(C.malloc(needed))
		defer C.free(unsafe.Pointer(buf))
		cerr = nil
		st = C.agentlm_agent_trajectory_json(p, buf, needed, &needed, &cerr)
		if err := check("TrajectoryJSON", st, cerr); err != nil {
			return err
		}
		out = C.GoStringN(buf, C.int(needed))
		return nil
	})
	return out, err
}
