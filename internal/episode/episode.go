// Package episode logs a degradation once per episode instead of once per
// failure. An episode of one kind (failed Redis writes, stale values
// served, ...) starts with the first failure after a quiet spell, which
// logs one Warn naming that failure's key and error; every later failure is
// counted without a log line; the episode ends once Quiet has passed without
// a failure (or the Tracker is closed), which logs one Info with the count,
// the duration from the first failure to the last, and the last key and
// error.
//
// An episode ends on quiet rather than on the next success: a partial
// outage (one Redis Cluster master down, one bad key among good ones)
// mixes failures with successes, and ending on each success would log a
// pair of lines per failure again.
package episode

import (
	"sync"
	"time"

	"go.uber.org/zap"
)

// DefaultQuiet is the quiet spell that ends an episode unless New is given
// another.
const DefaultQuiet = 10 * time.Second

// Tracker follows the episodes of one kind of failure. It starts no
// goroutine of its own: the end of an episode is found by a timer
// (time.AfterFunc) armed when the episode starts, which runs once per Quiet
// at most while the episode lasts, and not at all between episodes. Its
// methods are safe for concurrent use; when no failure is reported it costs
// nothing.
type Tracker struct {
	log      *zap.Logger
	startMsg string
	endMsg   string
	quiet    time.Duration

	mu      sync.Mutex  // guards every field below
	timer   *time.Timer // made by the first episode; armed while one runs
	active  bool        // an episode is running
	closed  bool        // Close was called: failures are no longer reported
	count   uint64      // failures of the running episode
	first   time.Time   // the running episode's first failure
	last    time.Time   // and its last
	lastKey string
	lastErr error
}

// EndSuffix ends the message of an episode's end: the start's message
// followed by it.
const EndSuffix = ": episode ended"

// New returns a Tracker that logs msg (Warn) when an episode starts and
// msg+EndSuffix (Info) when it ends, after quiet (DefaultQuiet if quiet <=
// 0) without a failure.
func New(log *zap.Logger, msg string, quiet time.Duration) *Tracker {
	if quiet <= 0 {
		quiet = DefaultQuiet
	}
	return &Tracker{log: log, startMsg: msg, endMsg: msg + EndSuffix, quiet: quiet}
}

// Quiet returns how long an episode lasts past its last failure.
func (t *Tracker) Quiet() time.Duration { return t.quiet }

// Failures returns how many failures the running episode has counted (0
// between episodes).
func (t *Tracker) Failures() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.count
}

// Fail reports one failure, of key (may be empty) with err. The first
// failure of an episode logs a Warn with both; the others are only counted.
// After Close it does nothing. It allocates nothing once an episode runs.
func (t *Tracker) Fail(key string, err error) {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	t.count++
	t.last, t.lastKey, t.lastErr = now, key, err
	if t.active {
		return
	}
	t.active, t.count, t.first = true, 1, now
	if t.timer == nil {
		t.timer = time.AfterFunc(t.quiet, t.expire)
	} else {
		t.timer.Reset(t.quiet)
	}
	// Logged under mu, so that no end of this episode is logged before its
	// start; it happens once per episode.
	fields := []zap.Field{zap.Error(err), zap.Duration("quiet", t.quiet)}
	if key != "" {
		fields = append(fields, zap.String("key", key))
	}
	t.log.Warn(t.startMsg, fields...)
}

// expire runs on the timer: it ends the episode if Quiet has passed since
// its last failure, or waits for the rest of that time.
func (t *Tracker) expire() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.active || t.closed {
		return
	}
	if wait := t.quiet - time.Since(t.last); wait > 0 {
		t.timer.Reset(wait)
		return
	}
	t.endLocked("quiet")
}

// Close ends a running episode (logging its end, with ended "closed") and
// stops the timer; later failures are not reported. It is idempotent.
func (t *Tracker) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	t.closed = true
	if t.timer != nil {
		t.timer.Stop()
	}
	if t.active {
		t.endLocked("closed")
	}
}

// endLocked ends the running episode and logs its end. Called with mu held.
func (t *Tracker) endLocked(why string) {
	count, dur, key, err := t.count, t.last.Sub(t.first), t.lastKey, t.lastErr
	t.active, t.count, t.lastKey, t.lastErr = false, 0, "", nil
	fields := []zap.Field{zap.Uint64("count", count), zap.Duration("duration", dur),
		zap.NamedError("last_error", err), zap.String("ended", why)}
	if key != "" {
		fields = append(fields, zap.String("last_key", key))
	}
	t.log.Info(t.endMsg, fields...)
}
