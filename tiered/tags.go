package tiered

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nearcache/nearcache/internal/errfmt"
	"github.com/nearcache/nearcache/l2"
)

// Tags (see WithTags, SetTags and Cache.InvalidateTag).
//
// Each tag has a version in Redis (l2.Store.TagVersions; it only grows).
// An entry carries the versions its tags had when its value was made: for
// a write, when the write began; for a load, before its loader ran (or, for
// tags a loader declares with SetTags, when it declared them), read from
// Redis, not from what the Cache knows: a tag may have moved on there while
// its message is on its way. The entry is current while each of its tags
// still has that version. InvalidateTag
// moves the tags to new versions and publishes their names, in one script
// per partition: one write and one message per tag, however many entries
// carry it.
//
// Each Cache keeps the versions it knows (tagState). A message naming a
// tag drops it from there, and a repair (some message may have been lost)
// drops them all; a tag it does not know is read from Redis before a
// tagged value read from Redis is served. A tagged L1 copy is served while
// its tags' versions are known and current: checking them costs one atomic
// load while no tag changed since the copy was last checked (tagEpoch), a
// read-locked look per tag otherwise. An untagged copy pays one nil check.
//
// Without Redis the versions live in the Cache alone: InvalidateTag moves
// the local version, and an unknown tag has version 0.

// maxKnownTags bounds tagState.vers: past it, every known version is
// dropped at once (with Redis, they are read again as needed; without
// Redis, L1 is dropped too, since nothing else holds them).
const maxKnownTags = 1 << 16

// maxTagLen bounds the length of one tag's name.
const maxTagLen = 1024

// tagStamps are an item's tags with the versions they had when its value
// was made. seen is the tagEpoch at which they were last found current.
type tagStamps struct {
	tags []l2.Tag
	seen atomic.Uint64
}

// bytes is what the stamps hold beside an L1 copy's value (each tag's name
// and version), counted in its cost with L1MaxBytes; 0 for nil.
func (ts *tagStamps) bytes() int64 {
	if ts == nil {
		return 0
	}
	var n int64
	for _, t := range ts.tags {
		n += int64(len(t.Name)) + 8
	}
	return n
}

// tagState is what a Cache knows of its tags' versions.
type tagState struct {
	// epoch moves whenever a known version changes or is dropped; an
	// item whose stamps were found current at this epoch is current.
	epoch atomic.Uint64
	mu    sync.RWMutex
	vers  map[string]uint64 // guarded by mu
	// gen (guarded by mu) moves when versions are dropped, so that a read
	// of versions from Redis that began before does not store them.
	gen uint64
}

// tagsCurrent reports whether an item's stamps are still current: one
// atomic load when no tag changed since they were last checked.
func (c *Cache[V]) tagsCurrent(ts *tagStamps) bool {
	e := c.tags.epoch.Load()
	if ts.seen.Load() == e {
		return true
	}
	if !c.stampsCurrent(ts.tags) {
		return false
	}
	ts.seen.Store(e)
	return true
}

// stampsCurrent checks stamps against the known versions: with Redis, a tag
// whose version is not known is not current (a read from Redis learns it).
func (c *Cache[V]) stampsCurrent(stamps []l2.Tag) bool {
	c.tags.mu.RLock()
	defer c.tags.mu.RUnlock()
	for _, t := range stamps {
		v, ok := c.tags.vers[t.Name]
		if (!ok && c.l2 != nil) || t.Version < v {
			return false
		}
	}
	return true
}

// checkTags validates the tags of a WithTags, SetTags or InvalidateTag call.
func checkTags(op string, tags []string) error {
	if len(tags) > l2.MaxTags {
		return fmt.Errorf("tiered: %s: %d tags, limit %d", op, len(tags), l2.MaxTags)
	}
	for _, t := range tags {
		if t == "" || len(t) > maxTagLen {
			return fmt.Errorf("tiered: %s: tag %s: empty or longer than %d bytes", op, errfmt.Key(t), maxTagLen)
		}
	}
	return nil
}

// knowTags makes sure the versions of tags are known, reading the unknown
// ones from Redis in one pipeline. A read that an invalidation overtook
// (gen moved) stores nothing; its versions are returned for the caller's
// one use all the same, since they were current when read.
func (c *Cache[V]) knowTags(ctx context.Context, tags []string) (map[string]uint64, error) {
	var unknown []string
	c.tags.mu.RLock()
	gen := c.tags.gen
	for _, t := range tags {
		if _, ok := c.tags.vers[t]; !ok && !slices.Contains(unknown, t) {
			unknown = append(unknown, t)
		}
	}
	c.tags.mu.RUnlock()
	if len(unknown) == 0 || c.l2 == nil {
		return nil, nil
	}
	vers, err := c.tagVersions(ctx, unknown)
	if err != nil {
		return nil, err
	}
	read := make(map[string]uint64, len(unknown))
	for i, t := range unknown {
		read[t] = vers[i]
	}
	c.tags.mu.Lock()
	if c.tags.gen == gen {
		if len(c.tags.vers)+len(read) > maxKnownTags {
			c.forgetTagsLocked()
		} else {
			if c.tags.vers == nil {
				c.tags.vers = make(map[string]uint64, len(read))
			}
			for t, v := range read {
				c.tags.vers[t] = max(c.tags.vers[t], v)
			}
		}
	}
	c.tags.mu.Unlock()
	return read, nil
}

// tagVersions reads the versions of tags from Redis (one pipeline),
// bounded and counted as any Redis operation of a read.
func (c *Cache[V]) tagVersions(ctx context.Context, tags []string) (vers []uint64, err error) {
	err = c.redisOp(ctx, func(rctx context.Context) error {
		vers, err = c.l2.TagVersions(rctx, tags)
		return err
	})
	return vers, err
}

// forgetTagsLocked drops every known version (c.tags.mu held).
func (c *Cache[V]) forgetTagsLocked() {
	c.tags.vers = nil
	c.tags.gen++
	c.tags.epoch.Add(1)
}

// versionOfLocked returns the version of tag known now (after knowTags),
// or from read (what knowTags read but could not store).
func (c *Cache[V]) versionOfLocked(tag string, read map[string]uint64) (uint64, bool) {
	if v, ok := c.tags.vers[tag]; ok {
		return v, true
	}
	v, ok := read[tag]
	return v, ok || c.l2 == nil
}

// stampTags returns tags with their current versions: what a value made
// now carries. With Redis, the versions are read from Redis, whatever this
// Cache knows: a tag may have moved on there while its message is still on
// its way, and a value stamped with the version known here would then be a
// miss everywhere, a lost write. What is read also teaches the Cache: a
// version newer than the one it knew makes its copies stamped before check
// again. The error of that read is returned (the value is then served but
// not stored). Without Redis, the Cache's own versions are the record.
func (c *Cache[V]) stampTags(ctx context.Context, tags []string) ([]l2.Tag, error) {
	if len(tags) == 0 {
		return nil, nil
	}
	stamps := make([]l2.Tag, 0, len(tags))
	for _, t := range tags {
		if !slices.ContainsFunc(stamps, func(s l2.Tag) bool { return s.Name == t }) {
			stamps = append(stamps, l2.Tag{Name: t})
		}
	}
	if c.l2 == nil {
		c.tags.mu.RLock()
		for i := range stamps {
			stamps[i].Version = c.tags.vers[stamps[i].Name]
		}
		c.tags.mu.RUnlock()
		return stamps, nil
	}
	names := make([]string, len(stamps))
	for i, s := range stamps {
		names[i] = s.Name
	}
	c.tags.mu.RLock()
	gen := c.tags.gen
	c.tags.mu.RUnlock()
	vers, err := c.tagVersions(ctx, names)
	if err != nil {
		return nil, err
	}
	c.tags.mu.Lock()
	moved := false
	for i := range stamps {
		known, ok := c.tags.vers[stamps[i].Name]
		// A version never goes back: one known here above Redis's (its
		// key was lost and remade from a clock behind) stays.
		stamps[i].Version = max(vers[i], known)
		if c.tags.gen == gen && ok && vers[i] > known {
			c.tags.vers[stamps[i].Name] = vers[i]
			moved = true
		}
	}
	if moved {
		c.tags.epoch.Add(1)
	}
	c.tags.mu.Unlock()
	return stamps, nil
}

// readStamps checks the tags of a value read from Redis: it returns the
// item's stamps if they are current, reading unknown versions from Redis
// first; ok is false when a tag moved on since the value was made (the
// value is then as good as deleted), or when err says why the versions
// could not be read (the value may well be current: not a miss).
func (c *Cache[V]) readStamps(ctx context.Context, tags []l2.Tag) (ts *tagStamps, ok bool, err error) {
	e := c.tags.epoch.Load()
	names := make([]string, len(tags))
	for i, t := range tags {
		names[i] = t.Name
	}
	read, err := c.knowTags(ctx, names)
	if err != nil {
		return nil, false, err
	}
	c.tags.mu.RLock()
	for _, t := range tags {
		v, known := c.versionOfLocked(t.Name, read)
		if !known || t.Version < v {
			c.tags.mu.RUnlock()
			return nil, false, nil
		}
	}
	c.tags.mu.RUnlock()
	ts = &tagStamps{tags: tags}
	if read == nil {
		ts.seen.Store(e) // checked against known versions only
	}
	return ts, true, nil
}

// mergeStamps joins the stamps of a call's WithTags and of its loader's
// SetTags or SetKeyTags (a tag named twice keeps its older version). ok is
// false when they add up to more than l2.MaxTags distinct tags: no entry
// can carry them all, and one that dropped some would escape their
// invalidation, so the load's result is served but kept nowhere.
func mergeStamps(a, b []l2.Tag) (ts *tagStamps, ok bool) {
	if len(a) == 0 && len(b) == 0 {
		return nil, true
	}
	out := slices.Clone(a)
	for _, t := range b {
		if i := slices.IndexFunc(out, func(s l2.Tag) bool { return s.Name == t.Name }); i >= 0 {
			out[i].Version = min(out[i].Version, t.Version)
			continue
		}
		out = append(out, t)
	}
	return &tagStamps{tags: out}, len(out) <= l2.MaxTags
}

// distinctTags counts the distinct tags of stamp lists.
func distinctTags(lists ...[]l2.Tag) int {
	seen := map[string]struct{}{}
	for _, l := range lists {
		for _, t := range l {
			seen[t.Name] = struct{}{}
		}
	}
	return len(seen)
}

// dropTags forgets the known versions of tags (an invalidation named them)
// and every running flight, whose loads may carry them: later callers start
// fresh loads.
func (c *Cache[V]) dropTags(tags []string) {
	c.tags.mu.Lock()
	for _, t := range tags {
		delete(c.tags.vers, t)
	}
	c.tags.gen++
	c.tags.epoch.Add(1)
	c.tags.mu.Unlock()
	c.forgetAll()
}

// forgetTags forgets every known version (a repair: messages may have been
// lost).
func (c *Cache[V]) forgetTags() {
	c.tags.mu.Lock()
	c.forgetTagsLocked()
	c.tags.mu.Unlock()
}

// InvalidateTag makes every entry carrying tag (see WithTags and SetTags)
// a miss on every instance and in Redis: one script moves the tag's
// version in Redis and publishes the invalidation; other instances drop
// their copies within the propagation bound, as for Delete. Values made
// before the call returned (loads whose loader started before it, writes
// that began before it) carry the old version, whenever they are stored.
// Without Redis it applies to this Cache alone. Errors as for Delete; after
// an error the tag may or may not have moved on: call it again.
func (c *Cache[V]) InvalidateTag(ctx context.Context, tag string) error {
	return c.InvalidateTags(ctx, tag)
}

// InvalidateTags is InvalidateTag for several tags: one script per
// partition (one on a standalone or Sentinel-managed Redis, one per hash
// slot of the tags on Redis Cluster).
func (c *Cache[V]) InvalidateTags(ctx context.Context, tags ...string) error {
	if err := checkTags("InvalidateTags", tags); err != nil {
		return err
	}
	if c.isDone.Load() {
		return &opError{op: "invalidate tags", keys: tags, err: ErrClosed}
	}
	if len(tags) == 0 {
		return nil
	}
	if c.l2 == nil {
		now := uint64(time.Now().UnixMicro())
		c.tags.mu.Lock()
		if len(c.tags.vers)+len(tags) > maxKnownTags {
			c.forgetTagsLocked()
			c.tags.mu.Unlock()
			c.dropAll() // the versions were the only record: drop what they guarded
			c.tags.mu.Lock()
		}
		if c.tags.vers == nil {
			c.tags.vers = make(map[string]uint64, len(tags))
		}
		for _, t := range tags {
			c.tags.vers[t] = max(c.tags.vers[t]+1, now)
		}
		c.tags.gen++
		c.tags.epoch.Add(1)
		c.tags.mu.Unlock()
		c.forgetAll()
		return nil
	}
	if err := ctx.Err(); err != nil {
		return &opError{op: "invalidate tags", keys: tags, err: err}
	}
	c.dropTags(tags)
	err := c.callerOp(ctx, true, func(rctx context.Context) error {
		return c.l2.InvalidateTags(rctx, tags, c.notifyTags)
	})
	c.dropTags(tags) // a read of the old versions may have raced the script
	if err != nil {
		return c.writeErr(ctx, "invalidate tags", tags, err)
	}
	return nil
}

// InvalidateTags implements invalidation.TagHandler.
func (h handler[V]) InvalidateTags(tags []string) { h.c.dropTags(tags) }
