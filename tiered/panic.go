package tiered

import (
	"fmt"
	"runtime/debug"
	"strconv"

	"go.uber.org/zap"
)

// PanicError is the error every waiter of a load gets when its loader (or
// batch loader) panics. Test for it with errors.As; errors.Is also matches
// the panic value when it is an error.
type PanicError struct {
	// Key is the key whose load panicked; empty for a batch load.
	Key string
	// Value is the value the loader panicked with.
	Value any
	// Stack is the panicking goroutine's stack (runtime/debug.Stack) at the
	// time of the panic.
	Stack []byte
}

func (e *PanicError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("tiered: batch load panicked: %v", e.Value)
	}
	return "tiered: load of key " + strconv.Quote(e.Key) + fmt.Sprintf(" panicked: %v", e.Value)
}

// Unwrap returns the panic value if it is an error, otherwise nil.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// newPanicError is called in the deferred function that recovered r, so
// that the stack still holds the panicking frames.
func newPanicError(key string, r any) *PanicError {
	return &PanicError{Key: key, Value: r, Stack: debug.Stack()}
}

// loadPanicked counts and logs (with its stack) a panic recovered from the
// work of key's flight (key "" for a batch, described by fields), and
// returns the error its waiters get. It must be called by the deferred
// function that recovered r.
func (c *Cache[V]) loadPanicked(key string, r any, fields ...zap.Field) error {
	pe := newPanicError(key, r)
	c.st.panics.Add(1)
	c.log.Error("nearcache: loader panicked", append(fields, zap.String("key", key), zap.Any("panic", r),
		zap.ByteString("stack", pe.Stack))...)
	return pe
}
