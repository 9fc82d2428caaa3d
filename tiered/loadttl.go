package tiered

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nearcache/nearcache/internal/errfmt"
	"github.com/nearcache/nearcache/l2"
)

// SetTTL, called by a Loader or BatchLoader with the ctx it was given,
// sets how long what it returns stays fresh in Redis (and so bounds local
// copies): for a value, its TTL; for a not-found result (ErrNotFound, or a
// key absent from a batch's map), its negative-cache TTL, even if
// Config.NegativeTTL is zero. In a BatchLoader it applies to every key of
// the call that SetKeyTTL did not set. ttl <= 0: the result is returned to
// its callers but stored nowhere (neither Redis nor L1), e.g. a token that
// has already expired.
//
// It overrides the leading call's WithTTL, WithNegativeTTL, Config.TTL and
// Config.NegativeTTL. With Config.FailSafeMaxStale, a value stays fresh
// for ttl and Redis keeps it ttl + FailSafeMaxStale, as for any other TTL.
// A ctx derived from the loader's (WithTimeout, WithValue, ...) works too,
// from any goroutine, until the loader returns; a later call changes
// nothing and returns an error saying so. It also returns an error when
// ctx is not a loader's ctx (a caller's ctx, context.Background()).
func SetTTL(ctx context.Context, ttl time.Duration) error {
	h, err := lockLoadTTL(ctx, "SetTTL")
	if err != nil {
		return err
	}
	defer h.mu.Unlock()
	h.ttl, h.ttlSet = ttl, true
	return nil
}

// SetKeyTTL is SetTTL for one key of a BatchLoader's call (or the key of a
// Loader's call).
//
// It takes precedence over SetTTL for that key, whichever is called first.
// It returns an error naming key when key is not one of the keys the
// loader was asked for.
func SetKeyTTL(ctx context.Context, key string, ttl time.Duration) error {
	h, err := lockLoadTTL(ctx, "SetKeyTTL")
	if err != nil {
		return err
	}
	defer h.mu.Unlock()
	if !h.hasLocked(key) {
		asked := errfmt.Key(h.key)
		if h.keys != nil {
			asked = errfmt.Keys(h.keys)
		}
		return fmt.Errorf("tiered: SetKeyTTL %s: %w (the loader was asked for %s)", errfmt.Key(key), errNotLoadKey, asked)
	}
	if h.perKey == nil {
		h.perKey = make(map[string]time.Duration, 1)
	}
	h.perKey[key] = ttl
	return nil
}

// SetL1TTL caps the local copies of what the loader returns (every key of
// a batch), within Config.MaxL1TTL and never past the Redis TTL; ttl <= 0:
// not kept in L1 (the next read goes to Redis).
//
// It overrides the leading call's WithL1TTL for the copies this load
// fills. A copy filled later from Redis, by this instance or another, is
// capped as the call that reads it says (WithL1TTL, Config.MaxL1TTL), and
// by the value's remaining Redis TTL, which SetTTL sets. Errors as for
// SetTTL.
func SetL1TTL(ctx context.Context, ttl time.Duration) error {
	h, err := lockLoadTTL(ctx, "SetL1TTL")
	if err != nil {
		return err
	}
	defer h.mu.Unlock()
	h.l1, h.l1Set = ttl, true
	return nil
}

// SetTags, called by a Loader or BatchLoader with the ctx it was given,
// tags what it returns (every key of a batch; values and cached not-found
// results), in addition to the leading call's WithTags: InvalidateTag of
// any of them makes the entry a miss everywhere. It reads the tags'
// current versions (from Redis, for tags this Cache does not know yet), so
// call it before reading what the value is made of: an InvalidateTag that
// lands after SetTags returned makes the loaded value a miss, one that
// landed before does not. If the versions cannot be read, it returns the
// error and the load's result is served to its callers but stored
// nowhere. At most l2.MaxTags tags per entry, each 1 to 1024 bytes: a
// result whose tags (the leading call's WithTags, SetTags's and
// SetKeyTags's) add up to more is served but stored nowhere, and the
// SetTags or SetKeyTags call that passes the limit returns an error; so
// is the result of a load whose SetTags or SetKeyTags was refused for a
// bad tag.
// Errors outside a loader as for SetTTL.
func SetTags(ctx context.Context, tags ...string) error {
	return setTags(ctx, "SetTags", "", false, tags)
}

// SetKeyTags is SetTags for one key of a BatchLoader's call (or the key of
// a Loader's call), in addition to SetTags's tags. It returns an error
// naming key when key is not one of the keys the loader was asked for.
func SetKeyTags(ctx context.Context, key string, tags ...string) error {
	return setTags(ctx, "SetKeyTags", key, true, tags)
}

func setTags(ctx context.Context, fn, key string, perKey bool, tags []string) error {
	h, err := lockLoadTTL(ctx, fn)
	if err != nil {
		if cerr := checkTags(fn, tags); cerr != nil {
			return cerr
		}
		return err
	}
	if err := checkTags(fn, tags); err != nil {
		// The good tags of the call are not recorded either: a result
		// kept without them would escape their invalidation.
		if h.tagErr == nil {
			h.tagErr = err
		}
		h.mu.Unlock()
		return fmt.Errorf("%w (what the loader returns is served but not stored)", err)
	}
	if perKey && !h.hasLocked(key) {
		h.mu.Unlock()
		return fmt.Errorf("tiered: %s %s: %w", fn, errfmt.Key(key), errNotLoadKey)
	}
	stamp := h.stamp
	// A tag this load has stamped already keeps that version (read before
	// this call, so no newer than the tag's version now: at worst an extra
	// miss), so a BatchLoader tagging each of its keys with the same tags
	// reads them from Redis once.
	var unread []string
	for _, t := range tags {
		if _, ok := h.read[t]; !ok {
			unread = append(unread, t)
		}
	}
	h.mu.Unlock()
	if len(tags) == 0 {
		return nil
	}
	fresh, serr := stamp(ctx, unread)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state != loadRunning {
		return fmt.Errorf("tiered: %s: %w", fn, errLoaderReturned)
	}
	if serr != nil {
		if h.tagErr == nil {
			h.tagErr = serr
		}
		return fmt.Errorf("tiered: %s: %w (what the loader returns is served but not stored)", fn, serr)
	}
	if h.read == nil && len(fresh) > 0 {
		h.read = make(map[string]uint64, len(fresh))
	}
	for _, t := range fresh {
		if _, ok := h.read[t.Name]; !ok {
			h.read[t.Name] = t.Version
		}
	}
	stamps := make([]l2.Tag, 0, len(tags))
	for _, t := range tags {
		if !slices.ContainsFunc(stamps, func(s l2.Tag) bool { return s.Name == t }) {
			stamps = append(stamps, l2.Tag{Name: t, Version: h.read[t]})
		}
	}
	if !perKey {
		h.tags = append(h.tags, stamps...)
		return tooManyTags(fn, key, h.tags, nil)
	}
	if h.keyTags == nil {
		h.keyTags = make(map[string][]l2.Tag, 1)
	}
	h.keyTags[key] = append(h.keyTags[key], stamps...)
	return tooManyTags(fn, key, h.tags, h.keyTags[key])
}

// tooManyTags returns the error of a SetTags or SetKeyTags after which a
// load's tags (all, or key's) exceed l2.MaxTags distinct tags: they are
// recorded all the same, and the result they tag is served but kept
// nowhere (see mergeStamps), so that none of them is escaped.
func tooManyTags(fn, key string, tags, keyTags []l2.Tag) error {
	if len(tags)+len(keyTags) <= l2.MaxTags {
		return nil
	}
	if n := distinctTags(tags, keyTags); n > l2.MaxTags {
		if key != "" {
			fn += " " + errfmt.Key(key)
		}
		return fmt.Errorf("tiered: %s: %d tags, limit %d (what the loader returns is served but not stored)", fn, n, l2.MaxTags)
	}
	return nil
}

// Why a setter refused; wrapped in errors that name the setter (and key).
var (
	errNotLoaderCtx   = errors.New("ctx is not the ctx a Cache gave a Loader or BatchLoader, nor derived from it")
	errLoaderReturned = errors.New("the loader has returned; nothing changed")
	errNotLoadKey     = errors.New("not a key of this load")
)

// loadCtxKey is the context key under which a flight's context (valuesFrom)
// answers with its loadTTL.
type loadCtxKey struct{}

// The states of a loadTTL.
const (
	loadIdle     uint8 = iota // no loader runs with it (yet): setters refuse
	loadRunning               // its loader runs: setters record
	loadReturned              // its loader returned: setters refuse
)

// smallLoad is the largest batch whose keys SetKeyTTL looks through one by
// one; a larger one gets an index on the first SetKeyTTL.
const smallLoad = 8

// loadTTL records what one loader call sets with SetTTL, SetKeyTTL and
// SetL1TTL. It lives inside the flight's context (valuesFrom), so that a
// load costs no allocation for it; it serves one loader call, from begin
// to end. Every field is guarded by mu: setters may run on any goroutine.
type loadTTL struct {
	mu     sync.Mutex
	state  uint8
	ttlSet bool                // ttl was set by SetTTL
	l1Set  bool                // l1 was set by SetL1TTL
	key    string              // a Loader's key
	keys   []string            // a BatchLoader's keys (nil for a Loader)
	index  map[string]struct{} // keys as a set, once SetKeyTTL needs it (large batches)
	ttl    time.Duration
	l1     time.Duration
	perKey map[string]time.Duration // set by SetKeyTTL

	// stamp reads tags' versions (the Cache's stampTags); set before begin.
	stamp   func(context.Context, []string) ([]l2.Tag, error)
	tags    []l2.Tag            // set by SetTags
	keyTags map[string][]l2.Tag // set by SetKeyTags
	tagErr  error               // a SetTags or SetKeyTags whose versions could not be read
	read    map[string]uint64   // the versions this load's stamps carry, by tag
}

// lockLoadTTL returns, with its mu held, the loadTTL of the running
// loader whose ctx is ctx or an ancestor of ctx; otherwise an error that
// says why, naming fn (the setter).
func lockLoadTTL(ctx context.Context, fn string) (*loadTTL, error) {
	var h *loadTTL
	if ctx != nil {
		h, _ = ctx.Value(loadCtxKey{}).(*loadTTL)
	}
	if h == nil {
		return nil, fmt.Errorf("tiered: %s: %w", fn, errNotLoaderCtx)
	}
	h.mu.Lock()
	switch h.state {
	case loadIdle:
		h.mu.Unlock()
		return nil, fmt.Errorf("tiered: %s: %w", fn, errNotLoaderCtx)
	case loadReturned:
		h.mu.Unlock()
		return nil, fmt.Errorf("tiered: %s: %w", fn, errLoaderReturned)
	}
	return h, nil
}

// hasLocked reports whether key is one of the load's keys. Called with mu
// held.
func (h *loadTTL) hasLocked(key string) bool {
	if h.keys == nil {
		return key == h.key
	}
	if len(h.keys) <= smallLoad {
		return slices.Contains(h.keys, key)
	}
	if h.index == nil {
		h.index = make(map[string]struct{}, len(h.keys))
		for _, k := range h.keys {
			h.index[k] = struct{}{}
		}
	}
	_, ok := h.index[key]
	return ok
}

// idle reports whether no loader has used h yet.
func (h *loadTTL) idle() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.state == loadIdle
}

// begin opens h to the setters: the loader of key (a Loader) or keys (a
// BatchLoader) is about to run.
func (h *loadTTL) begin(key string, keys []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.state, h.key, h.keys = loadRunning, key, keys
}

// end closes h to the setters (its loader has returned) and returns what
// they set.
func (h *loadTTL) end() loadSet {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.state = loadReturned
	h.keys, h.index = nil, nil // the batch's; not needed any more
	return loadSet{ttl: h.ttl, l1: h.l1, ttlSet: h.ttlSet, l1Set: h.l1Set, perKey: h.perKey,
		tags: h.tags, keyTags: h.keyTags, tagErr: h.tagErr}
}

// loaderCtx returns the ctx to hand to a loader (through the Observer's
// LoadStart) and the loadTTL it answers with, for begin and end around the
// loader call. ctx is the load's flight context (see detached), which
// carries an unused loadTTL; any other ctx is wrapped in one of its own.
func loaderCtx(ctx context.Context) (context.Context, *loadTTL) {
	if v, ok := ctx.(*valuesFrom); ok && v.lt.idle() {
		return v, &v.lt
	}
	v := &valuesFrom{Context: ctx, values: ctx}
	return v, &v.lt
}

// loadSet is what a loader set, read once it has returned.
type loadSet struct {
	ttl, l1       time.Duration
	ttlSet, l1Set bool
	perKey        map[string]time.Duration
	tags          []l2.Tag
	keyTags       map[string][]l2.Tag
	tagErr        error
}

// tagsFor returns the stamps the loader set for key: SetTags's and
// SetKeyTags's.
func (s loadSet) tagsFor(key string) []l2.Tag {
	if kt := s.keyTags[key]; len(kt) > 0 {
		return append(slices.Clip(s.tags), kt...)
	}
	return s.tags
}

// ttlFor returns the TTL the loader set for key, if any: SetKeyTTL's, else
// SetTTL's.
func (s loadSet) ttlFor(key string) (time.Duration, bool) {
	if d, ok := s.perKey[key]; ok {
		return d, true
	}
	return s.ttl, s.ttlSet
}

// storeTTL returns how long a loaded result of key (neg: not found) stays
// fresh in Redis: what its loader set (see SetTTL), else the leading
// call's TTL, or its negative TTL for a not-found result. keep is false
// when the result is stored nowhere: a loader's ttl <= 0, or a not-found
// result without a negative TTL. A not-found result that is kept is
// counted in Stats.
func (c *Cache[V]) storeTTL(o callOptions, set loadSet, key string, neg bool) (ttl time.Duration, keep bool) {
	ttl, ok := set.ttlFor(key)
	switch {
	case !ok && !neg:
		return o.ttl, true
	case !ok:
		ttl = o.negativeTTL
	}
	if ttl <= 0 {
		return 0, false
	}
	if neg {
		c.st.negativeCached.Add(1)
	}
	return ttl, true
}

// loadL1TTL returns the cap of the local copies a load fills: its
// loader's SetL1TTL within MaxL1TTL, else the leading call's (WithL1TTL).
// At most 0 means none.
func (c *Cache[V]) loadL1TTL(o callOptions, set loadSet) time.Duration {
	if set.l1Set {
		return min(set.l1, c.cfg.MaxL1TTL)
	}
	return o.l1TTL
}
