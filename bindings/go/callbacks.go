package agentlm

// Callbacks from C into Go. C holds only cgo.Handle values (integers), never Go pointers; each callback
// looks its Go value up, recovers any panic, and answers C. This file has exports, so its preamble
// holds declarations only.

// #include "agentlm.h"
import "C"

import (
	"fmt"
	"runtime/cgo"
	"time"
	"unsafe"
)

func handleOf(user unsafe.Pointer) cgo.Handle { return cgo.Handle(uintptr(user)) }

//export agentlmGoToken
func agentlmGoToken(user unsafe.Pointer, token C.uint32_t, text *C.char, n C.size_t) (ok C._Bool) {
	sink := handleOf(user).Value().(*tokenSink)
	defer func() {
		if r := recover(); r != nil {
			sink.panic = r
			ok = false
		}
	}()
	piece := C.GoStringN(text, C.int(n))
	sink.ids = append(sink.ids, uint32(token))
	sink.text = append(sink.text, piece...)
	if sink.onText != nil && !sink.onText(piece) {
		return false
	}
	return true
}

//export agentlmGoTool
func agentlmGoTool(user unsafe.Pointer, input *C.char, n C.size_t, result *C.agentlm_tool_result) (ok C._Bool) {
	tool := handleOf(user).Value().(*goTool)
	var observation string
	func() {
		defer func() {
			if r := recover(); r != nil {
				observation = fmt.Sprintf("Tool error: the tool panicked: %v", r)
				ok = false
			}
		}()
		out, err := tool.fn(C.GoStringN(input, C.int(n)))
		if err != nil {
			observation, ok = "Tool error: "+err.Error(), false
			return
		}
		observation, ok = out, true
	}()
	s, l := cstr(observation)
	C.agentlm_tool_result_set(result, s, l)
	return ok
}

//export agentlmGoRelease
func agentlmGoRelease(user unsafe.Pointer) { handleOf(user).Delete() }

//export agentlmGoProgress
func agentlmGoProgress(user unsafe.Pointer, p *C.agentlm_train_progress) (ok C._Bool) {
	sink := handleOf(user).Value().(*progressSink)
	defer func() {
		if r := recover(); r != nil {
			sink.panic = r
			ok = false
		}
	}()
	if sink.fn == nil {
		return true
	}
	return C._Bool(sink.fn(progressOf(p)))
}

// progressOf copies one step's figures from C.
func progressOf(p *C.agentlm_train_progress) Progress {
	return Progress{
		Step: uint64(p.step), Loss: float64(p.loss), LearningRate: float32(p.learning_rate), GradNorm: float64(p.grad_norm),
		Tokens: int(p.tokens), LossTokens: int(p.loss_tokens), TokensPerSecond: float64(p.tokens_per_s),
		MeanTokensPerSecond: float64(p.mean_tokens_per_s), Elapsed: seconds(float64(p.elapsed_s)), ETA: seconds(float64(p.eta_s)),
		PeakRSS: uint64(p.peak_rss_bytes),
	}
}

// seconds converts a C figure in seconds to a Duration.
func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
