package agentlm

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: -lagentlm
#include <stdlib.h>
#include "agentlm.h"

// Go callbacks exported in callbacks.go.
extern _Bool agentlmGoToken(void *user, uint32_t token, char *text, size_t len);
extern _Bool agentlmGoTool(void *user, char *input, size_t len, agentlm_tool_result *result);
extern void agentlmGoRelease(void *user);
extern _Bool agentlmGoProgress(void *user, agentlm_train_progress *progress);

// cgo.Handle values travel through void * user data; these casts keep go vet quiet about them.
// Defined here (a file without exports), declared extern where used.
void *agentlm_go_handle(uintptr_t h) { return (void *)h; }
agentlm_token_fn agentlm_go_token_fn(void) { return (agentlm_token_fn)agentlmGoToken; }
agentlm_tool_fn agentlm_go_tool_fn(void) { return (agentlm_tool_fn)agentlmGoTool; }
agentlm_free_fn agentlm_go_release_fn(void) { return (agentlm_free_fn)agentlmGoRelease; }
agentlm_train_progress_fn agentlm_go_progress_fn(void) { return (agentlm_train_progress_fn)agentlmGoProgress; }
*/
import "C"

import (
	"runtime/cgo"
	"unsafe"
)

// cstr passes a Go string to C as (pointer, length) without copying: the library copies what it keeps
// and never holds the pointer after the call returns. An empty string passes NULL with length 0.
func cstr(s string) (*C.char, C.size_t) {
	if len(s) == 0 {
		return nil, 0
	}
	// The string header's first word is its data pointer (unsafe.StringData from Go 1.20 on; this form
	// keeps the package building with Debian's Go 1.19).
	return (*C.char)(*(*unsafe.Pointer)(unsafe.Pointer(&s))), C.size_t(len(s))
}

func handlePtr(h cgo.Handle) unsafe.Pointer { return C.agentlm_go_handle(C.uintptr_t(h)) }

func gostr(s C.agentlm_str) string {
	if s.ptr == nil || s.len == 0 {
		return ""
	}
	return C.GoStringN(s.ptr, C.int(s.len))
}
