package agentlm

// #include "agentlm.h"
import "C"

import (
	"errors"
	"fmt"
)

// Status is a library status code: 0 success, > 0 flow control, < 0 an error (agentlm_status in C).
type Status int32

// Status codes (see include/agentlm.h).
const (
	StatusOK              Status = 0
	StatusDone            Status = 1
	StatusStopped         Status = 2
	StatusCancelled       Status = 3
	StatusBufferTooSmall  Status = 4
	StatusInvalidArgument Status = -1
	StatusNullPointer     Status = -2
	StatusInvalidUTF8     Status = -3
	StatusStructSize      Status = -4
	StatusIO              Status = -5
	StatusFormat          Status = -6
	StatusUnsupported     Status = -7
	StatusBackend         Status = -8
	StatusTokenizer       Status = -9
	StatusTemplate        Status = -10
	StatusModel           Status = -11
	StatusState           Status = -12
	StatusAborted         Status = -13
	StatusBusy            Status = -14
	StatusContextFull     Status = -15
	StatusInvalidHandle   Status = -16
	StatusPanic           Status = -99
)

func (s Status) String() string { return C.GoString(C.agentlm_status_string(C.int32_t(s))) }

// Error is a failed library call: its status and the library's message.
type Error struct {
	Status  Status
	Message string
	// Op is the Go method that failed.
	Op string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("agentlm: %s: %s", e.Op, e.Status)
	}
	return fmt.Sprintf("agentlm: %s: %s (%s)", e.Op, e.Message, e.Status)
}

// ErrClosed is returned by methods called after Close.
var ErrClosed = errors.New("agentlm: use of a closed handle")

// IsStatus reports whether err is an *Error with status s.
func IsStatus(err error, s Status) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == s
}

// check turns a status and error object into a Go error (nil for success and flow control), freeing
// the error object.
func check(op string, st C.agentlm_status, cerr *C.agentlm_error) error {
	if cerr != nil {
		defer C.agentlm_error_free(cerr)
	}
	if st >= 0 {
		return nil
	}
	msg := ""
	if cerr != nil {
		msg = C.GoString(C.agentlm_error_message(cerr))
	}
	return &Error{Status: Status(st), Message: msg, Op: op}
}

// Version is the library's version string.
func Version() string { return C.GoString(C.agentlm_version()) }

// ABIVersion is the library's C ABI version; it must equal the header's (checked by the tests).
func ABIVersion() uint32 { return uint32(C.agentlm_abi_version()) }

const headerABIVersion = uint32(C.AGENTLM_ABI_VERSION)
