package tiered

import (
	"errors"
	"strings"

	"github.com/nearcache/nearcache/internal/errfmt"
	"github.com/nearcache/nearcache/l2"
)

// opError is the error of a Cache operation. It adds to its cause what the
// cause does not already say, once:
//
//	tiered: [OP KEYS: ][CLASS: ]CAUSE
//
// OP and KEYS are left out when the cause is the error of the l2 call,
// which names its own operation and keys; CLASS is ErrUnavailable's text,
// or the caller's context error over a cause of its own (ErrStale is
// matched but not printed: its cause, an l2 stale error, says "stale
// version"); CAUSE is the cause's message without a leading "tiered: ",
// so that the prefix appears once.
type opError struct {
	op    string   // "set", "delete", "clear", "get", "load"; "" when the cause names it
	keys  []string // the operation's keys; nil when the cause names them
	class error    // ErrUnavailable, ErrStale, a context error, or nil
	err   error    // the cause
}

// remoteError wraps err, the error of an l2 (or bus) call made for op on
// keys, with class.
func remoteError(op string, keys []string, class, err error) *opError {
	var le *l2.Error
	if errors.As(err, &le) {
		op, keys = "", nil // the l2 error names them
	}
	return &opError{op: op, keys: keys, class: class, err: err}
}

func (e *opError) Error() string {
	var b strings.Builder
	b.WriteString("tiered: ")
	if e.op != "" {
		b.WriteString(e.op)
		if label := errfmt.Keys(e.keys); label != "" {
			b.WriteString(" ")
			b.WriteString(label)
		}
		b.WriteString(": ")
	}
	if e.class != nil && e.class != ErrStale {
		b.WriteString(bare(e.class))
		b.WriteString(": ")
	}
	b.WriteString(bare(e.err))
	return b.String()
}

// Unwrap exposes the class and the cause to errors.Is and errors.As.
func (e *opError) Unwrap() []error {
	if e.class == nil {
		return []error{e.err}
	}
	return []error{e.class, e.err}
}

// bare is err's message without a leading "tiered: ".
func bare(err error) string { return strings.TrimPrefix(err.Error(), "tiered: ") }

// codecError is a failure of the Codec: op is "encode" or "decode", err
// the codec's error or a *PanicError.
type codecError struct {
	op  string
	err error
}

func (e *codecError) Error() string { return e.op + ": " + bare(e.err) }

func (e *codecError) Unwrap() error { return e.err }
