package l2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"syscall"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/errfmt"
)

// Sentinel errors. Every error a Store returns (other than a plain
// ErrNotFound) is an *Error wrapping one of ErrConnection or ErrOperation, and
// possibly ErrTimeout, ErrCorrupt, ErrTooLarge or ErrClosed; test with errors.Is.
var (
	// ErrNotFound reports a missing key (redis.Nil never leaves this package).
	ErrNotFound = errors.New("l2: not found")
	// ErrConnection reports that Redis could not be reached or answered too
	// late: the seed's CacheConnectionError.
	ErrConnection = errors.New("l2: connection error")
	// ErrTimeout reports an operation that ran out of time; it comes with
	// ErrConnection.
	ErrTimeout = errors.New("l2: timeout")
	// ErrOperation reports that Redis answered with an error, or that the
	// data was unusable: the seed's CacheOperationError.
	ErrOperation = errors.New("l2: operation failed")
	// ErrCorrupt reports bytes in Redis that are not a valid envelope; it
	// comes with ErrOperation.
	ErrCorrupt = errors.New("l2: corrupt value")
	// ErrTooLarge reports a value above Config.MaxValueSize; it comes with
	// ErrOperation.
	ErrTooLarge = errors.New("l2: value too large")
	// ErrClosed reports use of a closed Store.
	ErrClosed = errors.New("l2: store closed")
	// ErrStale reports a versioned write that Redis refused because the
	// stored version is as new or newer; it comes with ErrOperation, and
	// errors.As finds a *StaleError with the keys and versions.
	ErrStale = errors.New("l2: stale version")
)

// StaleError lists the keys a versioned write refused: for each, the
// version offered and the version stored. The other keys of the call were
// written.
type StaleError struct {
	Offered map[string]uint64
	Stored  map[string]uint64
}

// Error names the first refused key (in sorted order) with its versions,
// and how many more were refused:
//
//	stale version: key "k": version 3 is not newer than the stored version 5
//
// It carries no package prefix: it is the detail of the error that wraps
// it, which names the package and the operation.
func (e *StaleError) Error() string {
	keys := make([]string, 0, len(e.Stored))
	for k := range e.Stored {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	k := keys[0]
	msg := fmt.Sprintf("stale version: key %s: version %d is not newer than the stored version %d", errfmt.Key(k), e.Offered[k], e.Stored[k])
	switch n := len(keys) - 1; n {
	case 0:
	case 1:
		msg += " (and 1 more key refused)"
	default:
		msg += fmt.Sprintf(" (and %d more keys refused)", n)
	}
	return msg
}

// Unwrap makes errors.Is(err, ErrStale) true.
func (e *StaleError) Unwrap() error { return ErrStale }

// Error carries the operation and key(s) of a failure, like *net.OpError.
type Error struct {
	Op   string   // "get", "set", "mget", ...
	Key  string   // the caller's key (without prefix) of a single-key operation
	Keys []string // the caller's keys of a batch operation (Key is then empty); nil for server ops
	Kind error    // ErrConnection or ErrOperation
	Err  error    // the cause
}

// Error formats the failure as
//
//	l2: OP KEYS: [connection error: ]CAUSE
//
// where KEYS is the quoted key, or for a batch its size and its first three
// keys in sorted order (`2 keys ("a", "b")`), and CAUSE is Err's message
// without a leading "l2: " (the package's own sentinels carry one), so the
// prefix appears once. A *StaleError cause names the keys it refused, and
// KEYS is left out.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("l2: ")
	b.WriteString(e.Op)
	var stale *StaleError
	if !errors.As(e.Err, &stale) {
		label := errfmt.Keys(e.Keys)
		if e.Key != "" {
			label = errfmt.Key(e.Key)
		}
		if label != "" {
			b.WriteString(" ")
			b.WriteString(label)
		}
	}
	b.WriteString(": ")
	if e.Kind == ErrConnection {
		b.WriteString("connection error: ")
	}
	if e.Err != nil {
		b.WriteString(strings.TrimPrefix(e.Err.Error(), "l2: "))
	}
	return b.String()
}

// Unwrap exposes both the kind and the cause to errors.Is and errors.As.
func (e *Error) Unwrap() []error { return []error{e.Kind, e.Err} }

// newError builds an *Error for an operation on keys: Key for one key, a
// copy of keys in Keys for several (the caller may reuse its slice).
func newError(op string, keys []string, kind, err error) *Error {
	e := &Error{Op: op, Kind: kind, Err: err}
	switch len(keys) {
	case 0:
	case 1:
		e.Key = keys[0]
	default:
		e.Keys = slices.Clone(keys)
	}
	return e
}

// classify wraps a go-redis error into an *Error of the right kind.
func classify(op string, keys []string, err error) error {
	if err == nil {
		return nil
	}
	var kind error = ErrOperation
	switch {
	case isTimeout(err):
		kind = ErrConnection
		err = joinTimeout(err)
	case isConnErr(err):
		kind = ErrConnection
	}
	return newError(op, keys, kind, err)
}

type timeoutErr struct{ error }

// Unwrap exposes the cause and ErrTimeout.
func (t timeoutErr) Unwrap() []error { return []error{t.error, ErrTimeout} }

func joinTimeout(err error) error { return timeoutErr{err} }

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.Is(err, redis.ErrPoolTimeout)
}

func isConnErr(err error) bool {
	var rerr redis.Error
	if errors.As(err, &rerr) {
		// A server reply; some mean the node is not usable right now.
		msg := rerr.Error()
		return strings.HasPrefix(msg, "LOADING") || strings.HasPrefix(msg, "READONLY") ||
			strings.HasPrefix(msg, "MASTERDOWN") || strings.HasPrefix(msg, "CLUSTERDOWN") ||
			strings.HasPrefix(msg, "TRYAGAIN")
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, redis.ErrClosed) ||
		errors.Is(err, context.Canceled)
}
