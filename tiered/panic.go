package tiered

import (
	"fmt"
	"runtime/debug"

	"go.uber.org/zap"

	"github.com/nearcache/nearcache/internal/errfmt"
)

// PanicError is the error a recovered panic becomes: every waiter of a load
// whose loader (or batch loader) panicked gets it, and so does a Set whose
// Codec panicked in Marshal. Test for it with errors.As; errors.Is also
// matches the panic value when it is an error.
type PanicError struct {
	// Op is what panicked: "load" for a Loader or BatchLoader, "encode" or
	// "decode" for the Codec's Marshal or Unmarshal.
	Op string
	// Key is the key whose load panicked; empty for a batch load and for
	// the Codec (the error that wraps it names the key).
	Key string
	// Value is the value passed to panic.
	Value any
	// Stack is the panicking goroutine's stack (runtime/debug.Stack) at the
	// time of the panic.
	Stack []byte
}

// Error says what panicked, and with what value:
//
//	tiered: load "k" panicked: VALUE
//	tiered: batch load panicked: VALUE
//	tiered: codec panicked in Marshal: VALUE
func (e *PanicError) Error() string {
	switch {
	case e.Op == "encode":
		return fmt.Sprintf("tiered: codec panicked in Marshal: %v", e.Value)
	case e.Op == "decode":
		return fmt.Sprintf("tiered: codec panicked in Unmarshal: %v", e.Value)
	case e.Key == "":
		return fmt.Sprintf("tiered: batch load panicked: %v", e.Value)
	}
	return fmt.Sprintf("tiered: load %s panicked: %v", errfmt.Key(e.Key), e.Value)
}

// Unwrap returns the panic value if it is an error, otherwise nil.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// newPanicError is called in the deferred function that recovered r, so
// that the stack still holds the panicking frames.
func newPanicError(op, key string, r any) *PanicError {
	return &PanicError{Op: op, Key: key, Value: r, Stack: debug.Stack()}
}

// loadPanicked counts and logs (with its stack) a panic recovered from the
// work of key's flight (key "" for a batch, described by fields), and
// returns the error its waiters get. It must be called by the deferred
// function that recovered r.
func (c *Cache[V]) loadPanicked(key string, r any, fields ...zap.Field) error {
	pe := newPanicError("load", key, r)
	c.st.panics.Add(1)
	c.log.Error("nearcache: loader panicked", append(fields, zap.String("key", key), zap.Any("panic", r),
		zap.ByteString("stack", pe.Stack))...)
	return pe
}
