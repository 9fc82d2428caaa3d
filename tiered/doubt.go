package tiered

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nearcache/nearcache/l2"
)

// doubtWindow is how long after a write ended in doubt this instance still
// applies its own invalidations for the write's keys. A command that Redis
// runs later than this was held up by a stalled server or connection, which
// the invalidation stream reports on its own (a stall or a disconnect
// invalidates everything when it is seen and again when the subscription is
// confirmed).
const doubtWindow = time.Minute

// maxDoubtKeys bounds the keys remembered; beyond it every own invalidation
// is applied until the window of the last one ends.
const maxDoubtKeys = 1 << 16

// doubts remembers the keys of writes whose outcome is unknown (a timeout or
// a broken connection after the script was sent): the script may still run,
// after a read refilled the old value, and then only its own invalidation
// message can tell this instance. Own messages for other keys are ignored,
// so a successful write costs the writer no second drop of its fresh copy.
type doubts struct {
	active atomic.Bool // anything remembered: the own-message fast path reads only this

	mu        sync.Mutex
	keys      map[string]time.Time // guarded by mu: until when a key is in doubt
	allUntil  time.Time            // guarded by mu: every key (Clear, or too many keys)
	nextSweep time.Time            // guarded by mu: when sweepLocked next looks for expired keys
}

// add puts keys in doubt (all keys when all is true or there are too many).
func (d *doubts) add(keys []string, all bool, now time.Time) {
	until := now.Add(doubtWindow)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.keys == nil {
		d.keys = make(map[string]time.Time)
	}
	d.sweepLocked(now)
	if all || len(d.keys)+len(keys) > maxDoubtKeys {
		d.allUntil = until
	} else {
		for _, k := range keys {
			d.keys[k] = until
		}
	}
	d.active.Store(true)
}

// match returns the keys of an own message that are in doubt.
func (d *doubts) match(keys []string, now time.Time) []string {
	if !d.active.Load() {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sweepLocked(now)
	if now.Before(d.allUntil) {
		return keys
	}
	var out []string
	for _, k := range keys {
		if until, ok := d.keys[k]; ok && now.Before(until) {
			out = append(out, k)
		}
	}
	return out
}

// any reports whether any key is in doubt.
func (d *doubts) any(now time.Time) bool {
	if !d.active.Load() {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sweepLocked(now)
	if now.Before(d.allUntil) {
		return true
	}
	for _, until := range d.keys {
		if now.Before(until) {
			return true
		}
	}
	return false
}

// sweepLocked forgets expired keys, at most once per eighth of the window
// (an own message must not cost a scan of the whole map), and clears active
// once nothing is remembered. Called with mu held.
func (d *doubts) sweepLocked(now time.Time) {
	if now.Before(d.nextSweep) {
		return
	}
	d.nextSweep = now.Add(doubtWindow / 8)
	for k, until := range d.keys {
		if !now.Before(until) {
			delete(d.keys, k)
		}
	}
	d.active.Store(len(d.keys) > 0 || now.Before(d.allUntil))
}

// inDoubt reports whether a failed write may still happen: Redis gave no
// answer (a timeout, a broken connection, the caller's ctx ending mid-call).
// An answer from Redis, a refused version or a skip by the open breaker
// means the script did not run and will not.
func inDoubt(err error) bool {
	return err != nil && !errors.Is(err, errBreakerOpen) && !errors.Is(err, l2.ErrOperation) && !isReply(err)
}
