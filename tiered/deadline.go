package tiered

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// opDeadlines makes the contexts that bound a Redis operation by
// RedisTimeout when the context it runs on can never end (Done returns nil:
// an inline leader's context.Background, a write on one). See redisCtx.
//
// context.WithTimeout would cost five allocations per operation (its
// context, the runtime timer and its closure, the Done channel, the cancel
// func), and setting and stopping a runtime timer, on every L2 hit.
// Instead, operations that begin within one window of slack share one end:
// a context whose deadline is RedisTimeout after the latest of their
// starts, so RedisTimeout, rounded up by at most slack, after each one's,
// and whose Done is closed at that deadline. On context.Background the
// end itself is the operation's context, which costs no allocation; on
// any other parent an opCtx adds the parent's values (one allocation).
// go-redis applies the deadline to the connection's reads and writes, and
// waits on Done while it waits for a pool connection (where its own
// PoolTimeout, seconds by default, would otherwise apply) or for a
// connection that another call is setting up, so every wait ends at the
// deadline, never before RedisTimeout and at most slack after it.
type opDeadlines struct {
	timeout time.Duration
	slack   time.Duration
	cur     atomic.Pointer[opEnd] // the end new operations share while it fits them
	mu      sync.Mutex            // serialises making a new end
}

// maxOpSlack bounds how far an operation's deadline is rounded up, unless
// RedisTimeout is so long that maxPendingEnds would not hold.
const maxOpSlack = 10 * time.Millisecond

// maxPendingEnds bounds the ends (each a context and a runtime timer, about
// 340 bytes) pending at once under steady traffic: one is made per window
// of slack and lives RedisTimeout, so the slack is at least
// RedisTimeout/maxPendingEnds (3.5 s for an hour, 0.1% of it).
const maxPendingEnds = 1024

func newOpDeadlines(timeout time.Duration) *opDeadlines {
	return &opDeadlines{timeout: timeout, slack: max(min(timeout/16, maxOpSlack), timeout/maxPendingEnds, 0)}
}

// context returns a context with parent's values whose deadline, and the
// moment its Done is closed, lies between RedisTimeout and RedisTimeout +
// slack from now (or parent's deadline, if earlier). parent's Done must be
// nil.
func (d *opDeadlines) context(parent context.Context) context.Context {
	end := d.endAfter(time.Now().Add(d.timeout))
	if parent == context.Background() {
		return end
	}
	deadline := end.at
	if pd, ok := parent.Deadline(); ok && pd.Before(deadline) {
		deadline = pd
	}
	return &opCtx{parent: parent, deadline: deadline, end: end}
}

// endAfter returns an end no earlier than deadline and at most slack later.
func (d *opDeadlines) endAfter(deadline time.Time) *opEnd {
	fits := func(e *opEnd) bool {
		return e != nil && !e.at.Before(deadline) && e.at.Sub(deadline) <= d.slack
	}
	if e := d.cur.Load(); fits(e) {
		return e
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if e := d.cur.Load(); fits(e) {
		return e
	}
	// The new end serves the operations of the next slack: their
	// deadlines fall between deadline and at.
	at := deadline.Add(d.slack)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(time.Until(at), cancel)
	e := &opEnd{at: at, ctx: ctx}
	d.cur.Store(e)
	return e
}

// opEnd is one shared end, a context without values (as
// context.Background) whose deadline is at and whose Done is ctx's, which a
// timer cancels at at. Err reports context.DeadlineExceeded once it has
// come.
type opEnd struct {
	at  time.Time
	ctx context.Context
}

// Deadline implements context.Context.
func (e *opEnd) Deadline() (time.Time, bool) { return e.at, true }

// Done implements context.Context.
func (e *opEnd) Done() <-chan struct{} { return e.ctx.Done() }

// Err implements context.Context.
func (e *opEnd) Err() error {
	if e.ctx.Err() != nil {
		return context.DeadlineExceeded
	}
	return nil
}

// Value implements context.Context: an end has no values.
func (e *opEnd) Value(any) any { return nil }

// AfterFunc lets contexts derived from this one (go-redis derives some
// while it waits for a connection) register on it instead of starting a
// goroutine each to watch Done.
func (e *opEnd) AfterFunc(f func()) func() bool { return context.AfterFunc(e.ctx, f) }

// String names the context for fmt (context's own contexts do the same).
func (e *opEnd) String() string {
	return "tiered.opEnd(" + e.at.Format(time.RFC3339Nano) + ")"
}

// opCtx is the context of one Redis operation on a parent with values: an
// end with the parent's values, and the parent's deadline if that is
// earlier.
type opCtx struct {
	parent   context.Context // values only; its Done is nil
	deadline time.Time
	end      *opEnd
}

// Deadline implements context.Context.
func (c *opCtx) Deadline() (time.Time, bool) { return c.deadline, true }

// Done implements context.Context.
func (c *opCtx) Done() <-chan struct{} { return c.end.Done() }

// Err implements context.Context.
func (c *opCtx) Err() error { return c.end.Err() }

// Value implements context.Context with the parent's values.
func (c *opCtx) Value(key any) any { return c.parent.Value(key) }

// AfterFunc is opEnd.AfterFunc.
func (c *opCtx) AfterFunc(f func()) func() bool { return c.end.AfterFunc(f) }

// String names the context for fmt.
func (c *opCtx) String() string {
	return "tiered.opCtx(" + c.deadline.Format(time.RFC3339Nano) + ")"
}
