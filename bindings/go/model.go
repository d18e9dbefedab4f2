package agentlm

// #include <stdlib.h>
// #include "agentlm.h"
import "C"

import (
	"runtime"
	"unsafe"
)

// Backend selects where a model computes.
type Backend int32

// Backends (those not compiled into the library fail to load with StatusUnsupported).
const (
	BackendCPU  Backend = 0
	BackendWGPU Backend = 1
	BackendCUDA Backend = 2
)

// ModelOptions are the load settings; the zero value loads on the CPU with the model's own context.
type ModelOptions struct {
	Backend    Backend
	Threads    int // CPU threads of the model's own pool; 0: the process-wide pool
	MaxContext int // cap on tokens per session; 0: the model's trained context
}

// Model is a loaded model: immutable and safe for concurrent use by any number of goroutines.
// Close releases this handle; sessions, agents and trainers made from it keep the model alive.
type Model struct {
	h handle[*C.agentlm_model]
}

// LoadModel loads a GGUF file or a Hugging Face model directory.
func LoadModel(path string, opts *ModelOptions) (*Model, error) {
	p := C.agentlm_model_params_default()
	if opts != nil {
		p.backend = C.int32_t(opts.Backend)
		p.n_threads = C.uint32_t(opts.Threads)
		p.max_context = C.uint32_t(opts.MaxContext)
	}
	s, n := cstr(path)
	var out *C.agentlm_model
	var cerr *C.agentlm_error
	st := C.agentlm_model_load(s, n, &p, &out, &cerr)
	runtime.KeepAlive(path)
	if err := check("LoadModel", st, cerr); err != nil {
		return nil, err
	}
	m := &Model{h: handle[*C.agentlm_model]{ptr: out, free: func(p *C.agentlm_model) { C.agentlm_model_free(p) }}}
	runtime.SetFinalizer(m, (*Model).Close)
	return m, nil
}

// Close releases the handle. Safe to call more than once.
func (m *Model) Close() error {
	m.h.close()
	runtime.SetFinalizer(m, nil)
	return nil
}

// use runs f with the live handle (shared lock: many goroutines may use a model at once).
func (m *Model) use(f func(p *C.agentlm_model) error) error {
	return m.h.use(f)
}

// VocabSize is the number of token ids.
func (m *Model) VocabSize() int {
	n := 0
	_ = m.use(func(p *C.agentlm_model) error { n = int(C.agentlm_model_vocab_size(p)); return nil })
	return n
}

// ContextLength is the most tokens a session can hold.
func (m *Model) ContextLength() int {
	n := 0
	_ = m.use(func(p *C.agentlm_model) error { n = int(C.agentlm_model_context_length(p)); return nil })
	return n
}

// Tokenize turns text into token ids; with special, special-token strings become control tokens
// (never use it for untrusted text).
func (m *Model) Tokenize(text string, addBOS, special bool) ([]uint32, error) {
	var flags C.uint32_t
	if addBOS {
		flags |= C.AGENTLM_TOKENIZE_ADD_BOS
	}
	if special {
		flags |= C.AGENTLM_TOKENIZE_PARSE_SPECIAL
	}
	var ids []uint32
	err := m.use(func(p *C.agentlm_model) error {
		s, n := cstr(text)
		var needed C.size_t
		var cerr *C.agentlm_error
		st := C.agentlm_model_tokenize(p, s, n, flags, nil, 0, &needed, &cerr)
		if st != C.AGENTLM_STATUS_BUFFER_TOO_SMALL && st != C.AGENTLM_STATUS_OK {
			return check("Tokenize", st, cerr)
		}
		C.agentlm_error_free(cerr)
		ids = make([]uint32, int(needed))
		if needed == 0 {
			return nil
		}
		cerr = nil
		st = C.agentlm_model_tokenize(p, s, n, flags, (*C.uint32_t)(&ids[0]), needed, &needed, &cerr)
		runtime.KeepAlive(text)
		return check("Tokenize", st, cerr)
	})
	return ids, err
}

// ApplyChatTemplate renders messages with the model's own chat template, generation prompt appended.
func (m *Model) ApplyChatTemplate(messages []Message) (string, error) {
	out := ""
	err := m.use(func(p *C.agentlm_model) error {
		n := len(messages)
		// The array and the strings live in C memory: C must not receive Go pointers to Go pointers.
		slots := n
		if slots == 0 {
			slots = 1
		}
		arr := (*C.agentlm_message)(C.malloc(C.size_t(slots) * C.sizeof_agentlm_message))
		defer C.free(unsafe.Pointer(arr))
		msgs := unsafe.Slice(arr, slots)
		for i, msg := range messages {
			r, c := C.CString(msg.Role), C.CString(msg.Content)
			defer C.free(unsafe.Pointer(r))
			defer C.free(unsafe.Pointer(c))
			msgs[i].role = C.agentlm_str{ptr: r, len: C.size_t(len(msg.Role))}
			msgs[i].content = C.agentlm_str{ptr: c, len: C.size_t(len(msg.Content))}
		}
		var needed C.size_t
		var cerr *C.agentlm_error
		st := C.agentlm_model_apply_chat_template(p, arr, C.size_t(n), true, nil, 0, &needed, &cerr)
		if st != C.AGENTLM_STATUS_BUFFER_TOO_SMALL {
			return check("ApplyChatTemplate", st, cerr)
		}
		C.agentlm_error_free(cerr)
		buf := (*C.char)(C.malloc(needed))
		defer C.free(unsafe.Pointer(buf))
		cerr = nil
		st = C.agentlm_model_apply_chat_template(p, arr, C.size_t(n), true, buf, needed, &needed, &cerr)
		if err := check("ApplyChatTemplate", st, cerr); err != nil {
			return err
		}
		out = C.GoStringN(buf, C.int(needed))
		return nil
	})
	return out, err
}

// Message is one chat turn.
type Message struct {
	Role, Content string
}
