package agentlm

import (
	"runtime"
	"sync"
)

// handle owns one C handle (P is its pointer type): calls hold a read lock (so Cancel can run beside
// a long call), Close takes the write lock, frees the handle once and makes later calls fail with
// ErrClosed.
type handle[P comparable] struct {
	mu   sync.RWMutex
	ptr  P
	free func(P)
}

func (h *handle[P]) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	var none P
	if h.ptr != none {
		h.free(h.ptr)
		h.ptr = none
	}
}

// use runs f with the live pointer; the handle (and so its owner) stays reachable until f returns.
func (h *handle[P]) use(f func(p P) error) error {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var none P
	if h.ptr == none {
		return ErrClosed
	}
	err := f(h.ptr)
	runtime.KeepAlive(h)
	return err
}
