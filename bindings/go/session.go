package agentlm

// #include <stdlib.h>
// #include "agentlm.h"
// extern void *agentlm_go_handle(uintptr_t h);
// extern agentlm_token_fn agentlm_go_token_fn(void);
import "C"

import (
	"context"
	"fmt"
	"runtime"
	"runtime/cgo"
	"sync"
	"unsafe"
)

// GenerateParams control one generation; the zero value is not useful: start from DefaultGenerateParams.
type GenerateParams struct {
	MaxTokens         int
	Temperature       float32 // 0: greedy
	TopK              int
	TopP              float32
	MinP              float32
	RepetitionPenalty float32
	Seed              uint64
	IgnoreEOS         bool
	Stop              []string
}

// DefaultGenerateParams: 256 tokens, greedy, no stop strings.
func DefaultGenerateParams() GenerateParams {
	d := C.agentlm_generate_params_default()
	return GenerateParams{
		MaxTokens: int(d.max_tokens), Temperature: float32(d.temperature), TopK: int(d.top_k), TopP: float32(d.top_p),
		MinP: float32(d.min_p), RepetitionPenalty: float32(d.repetition_penalty), Seed: uint64(d.seed),
	}
}

// Generation is the outcome of Session.Generate.
type Generation struct {
	Text          string
	Tokens        []uint32
	FinishReason  int // an AGENTLM_FINISH_* value
	PrefillTokens int
	DecodeTPS     float64 // decode tokens per second
}

// Session is one conversation with its KV cache. Use it from one goroutine at a time (an overlapping
// call fails with StatusBusy); Cancel may be called from any goroutine.
type Session struct {
	h handle[*C.agentlm_session]
}

// NewSession makes a conversation on m holding up to capacity tokens (0: the model's context).
func (m *Model) NewSession(capacity int) (*Session, error) {
	var out *C.agentlm_session
	err := m.use(func(p *C.agentlm_model) error {
		params := C.agentlm_session_params_default()
		params.capacity = C.uint32_t(capacity)
		var cerr *C.agentlm_error
		return check("NewSession", C.agentlm_session_new(p, &params, &out, &cerr), cerr)
	})
	if err != nil {
		return nil, err
	}
	s := &Session{h: handle[*C.agentlm_session]{ptr: out, free: func(p *C.agentlm_session) { C.agentlm_session_free(p) }}}
	runtime.SetFinalizer(s, (*Session).Close)
	return s, nil
}

// Close frees the session. Safe to call more than once.
func (s *Session) Close() error {
	s.h.close()
	runtime.SetFinalizer(s, nil)
	return nil
}

func (s *Session) use(f func(p *C.agentlm_session) error) error {
	return s.h.use(f)
}

// AppendText appends trusted text (prompts, rendered templates): special-token strings become control tokens.
func (s *Session) AppendText(text string) error {
	return s.use(func(p *C.agentlm_session) error {
		t, n := cstr(text)
		var cerr *C.agentlm_error
		st := C.agentlm_session_append_text(p, t, n, &cerr)
		runtime.KeepAlive(text)
		return check("AppendText", st, cerr)
	})
}

// AppendUntrustedText appends text in which special-token strings stay plain text (tool output, user input).
func (s *Session) AppendUntrustedText(text string) error {
	return s.use(func(p *C.agentlm_session) error {
		t, n := cstr(text)
		var cerr *C.agentlm_error
		st := C.agentlm_session_append_untrusted_text(p, t, n, &cerr)
		runtime.KeepAlive(text)
		return check("AppendUntrustedText", st, cerr)
	})
}

// AppendTokens appends token ids.
func (s *Session) AppendTokens(ids []uint32) error {
	return s.use(func(p *C.agentlm_session) error {
		var ptr *C.uint32_t
		if len(ids) > 0 {
			ptr = (*C.uint32_t)(unsafe.Pointer(&ids[0]))
		}
		var cerr *C.agentlm_error
		st := C.agentlm_session_append_tokens(p, ptr, C.size_t(len(ids)), &cerr)
		runtime.KeepAlive(ids)
		return check("AppendTokens", st, cerr)
	})
}

// Reset forgets the conversation.
func (s *Session) Reset() error {
	return s.use(func(p *C.agentlm_session) error {
		var cerr *C.agentlm_error
		return check("Reset", C.agentlm_session_reset(p, &cerr), cerr)
	})
}

// Truncate rewinds the conversation to its first n tokens.
func (s *Session) Truncate(n int) error {
	return s.use(func(p *C.agentlm_session) error {
		var cerr *C.agentlm_error
		return check("Truncate", C.agentlm_session_truncate(p, C.size_t(n), &cerr), cerr)
	})
}

// Cancel stops the running (or next) generation at the next token. Any goroutine.
func (s *Session) Cancel() {
	_ = s.use(func(p *C.agentlm_session) error { C.agentlm_session_cancel(p); return nil })
}

// SetAdapter applies a LoRA adapter at scale (1: as trained) from now on; nil detaches it.
func (s *Session) SetAdapter(a *Adapter, scale float32) error {
	return s.use(func(p *C.agentlm_session) error {
		return a.use(func(ap *C.agentlm_adapter) error {
			var cerr *C.agentlm_error
			return check("SetAdapter", C.agentlm_session_set_adapter(p, ap, C.float(scale), &cerr), cerr)
		})
	})
}

// tokenSink receives tokens on the generating goroutine (through a cgo.Handle, never a Go pointer in C).
type tokenSink struct {
	onText func(string) bool
	text   []byte
	ids    []uint32
	panic  any
}

// Generate continues the conversation, calling onText (may be nil) with each token's text; returning
// false from it stops the generation. When ctx is done the generation is cancelled and ctx.Err() is
// returned. A panic in onText stops the generation and is returned as an error.
func (s *Session) Generate(ctx context.Context, params GenerateParams, onText func(text string) bool) (Generation, error) {
	var gen Generation
	err := s.use(func(p *C.agentlm_session) error {
		cp := C.agentlm_generate_params_default()
		cp.max_tokens = C.uint32_t(params.MaxTokens)
		cp.temperature = C.float(params.Temperature)
		cp.top_k = C.uint32_t(params.TopK)
		cp.top_p = C.float(params.TopP)
		cp.min_p = C.float(params.MinP)
		cp.repetition_penalty = C.float(params.RepetitionPenalty)
		cp.seed = C.uint64_t(params.Seed)
		cp.ignore_eos = C.bool(params.IgnoreEOS)
		if n := len(params.Stop); n > 0 {
			arr := (*C.agentlm_str)(C.malloc(C.size_t(n) * C.sizeof_agentlm_str))
			defer C.free(unsafe.Pointer(arr))
			stops := unsafe.Slice(arr, n)
			for i, st := range params.Stop {
				c := C.CString(st)
				defer C.free(unsafe.Pointer(c))
				stops[i] = C.agentlm_str{ptr: c, len: C.size_t(len(st))}
			}
			cp.stop, cp.n_stop = arr, C.size_t(n)
		}
		sink := &tokenSink{onText: onText}
		h := cgo.NewHandle(sink)
		defer h.Delete()
		stop := watch(ctx, func() { C.agentlm_session_cancel(p) })
		var result C.agentlm_generation
		var cerr *C.agentlm_error
		st := C.agentlm_session_generate(p, &cp, C.agentlm_go_token_fn(), C.agentlm_go_handle(C.uintptr_t(h)), &result, &cerr)
		stop()
		gen = Generation{Text: string(sink.text), Tokens: sink.ids, FinishReason: int(result.finish_reason),
			PrefillTokens: int(result.prefill_tokens), DecodeTPS: float64(result.decode_tokens_per_s)}
		if err := check("Generate", st, cerr); err != nil {
			return err
		}
		if sink.panic != nil {
			return fmt.Errorf("agentlm: Generate: token callback panicked: %v", sink.panic)
		}
		if st == C.AGENTLM_STATUS_CANCELLED && ctx.Err() != nil {
			return ctx.Err()
		}
		return nil
	})
	return gen, err
}

// watch calls cancel once if ctx is done before the returned stop function is called.
func watch(ctx context.Context, cancel func()) (stop func()) {
	if ctx.Done() == nil {
		return func() {}
	}
	if ctx.Err() != nil {
		// Already done: cancel before the call starts, not whenever the goroutine gets to run.
		cancel()
		return func() {}
	}
	var mu sync.Mutex
	running := true
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		select {
		case <-ctx.Done():
			mu.Lock()
			if running {
				cancel()
			}
			mu.Unlock()
		case <-done:
		}
	}()
	return func() {
		mu.Lock()
		running = false
		mu.Unlock()
		close(done)
		<-finished
	}
}
