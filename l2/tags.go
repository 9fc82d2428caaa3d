package l2

import (
	"context"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/wire"
)

// TagVersions returns the current version of each tag (see wire.TagKey), in
// the order of tags: one script call per tag, pipelined (on a Cluster, one
// pipeline per master). A tag whose version key is missing gets one from
// Redis's clock (wire.TagReadScript), so that a version never goes back:
// an entry stamped with a tag's version is current while the version it
// carries is at least the tag's current one.
func (s *Store) TagVersions(ctx context.Context, tags []string) ([]uint64, error) {
	if s.closed.Load() {
		return nil, s.closedErr("tag versions", tags...)
	}
	if len(tags) == 0 {
		return nil, nil
	}
	ttl := wire.TagTTL.Milliseconds()
	out := make([]uint64, len(tags))
	parse := func(i int, v any) error {
		str, _ := v.(string)
		n, err := strconv.ParseUint(str, 10, 64)
		if err != nil {
			return newError("tag versions", []string{tags[i]}, ErrOperation,
				fmt.Errorf("version key %s holds %q, not a version", wire.TagKey(s.prefix, tags[i]), str))
		}
		out[i] = n
		return nil
	}
	if len(tags) == 1 {
		v, err := wire.TagReadScript.Run(ctx, s.client, []string{wire.TagKey(s.prefix, tags[0])}, ttl).Result()
		if err != nil {
			return nil, s.fail("tag versions", err, tags...)
		}
		return out, parse(0, v)
	}
	cmds := make([]*redis.Cmd, len(tags))
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, t := range tags {
			cmds[i] = wire.TagReadScript.Eval(ctx, p, []string{wire.TagKey(s.prefix, t)}, ttl)
		}
		return nil
	})
	if err != nil {
		return nil, s.fail("tag versions", err, tags...)
	}
	for i, c := range cmds {
		if err := parse(i, c.Val()); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// InvalidateTags moves each tag to a new version (wire.TagScript), so that
// every entry stamped with an older one is no longer current, and publishes
// fn's notification for the tags of each partition in the same script: the
// tags' key slots on a Cluster (one script per slot, pipelined), partition 0
// otherwise. fn is called with the partition and the tags (not keys).
func (s *Store) InvalidateTags(ctx context.Context, tags []string, fn NotifyFunc) error {
	if s.closed.Load() {
		return s.closedErr("invalidate tags", tags...)
	}
	if len(tags) == 0 {
		return nil
	}
	type group struct {
		slot int
		tags []string
		keys []string
	}
	var groups []*group
	bySlot := map[int]*group{}
	for _, t := range tags {
		slot := 0
		if s.cluster != nil {
			slot = wire.TagSlot(s.prefix, t)
		}
		g := bySlot[slot]
		if g == nil {
			g = &group{slot: slot}
			bySlot[slot] = g
			groups = append(groups, g)
		}
		g.tags = append(g.tags, t)
		g.keys = append(g.keys, wire.TagKey(s.prefix, t))
	}
	ttl := wire.TagTTL.Milliseconds()
	args := func(g *group) ([]string, []any, error) {
		if fn == nil {
			k, a := wire.Args(g.keys, nil, ttl)
			return k, a, nil
		}
		n := fn(g.slot, g.tags)
		if n.Channel == "" || n.SeqKey == "" {
			return nil, nil, fmt.Errorf("notification for partition %d has an empty channel or sequence key", g.slot)
		}
		k, a := wire.Args(g.keys, &n, ttl)
		return k, a, nil
	}
	if len(groups) == 1 {
		k, a, err := args(groups[0])
		if err != nil {
			return newError("invalidate tags", tags, ErrOperation, err)
		}
		if err := wire.TagScript.Run(ctx, s.client, k, a...).Err(); err != nil {
			return s.fail("invalidate tags", err, tags...)
		}
		if fn != nil {
			s.notifies.Add(1)
		}
		return nil
	}
	cmds := make([]*redis.Cmd, len(groups))
	var aerr error
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, g := range groups {
			k, a, err := args(g)
			if err != nil {
				aerr = err
				return err
			}
			cmds[i] = wire.TagScript.Eval(ctx, p, k, a...)
		}
		return nil
	})
	if aerr != nil {
		return newError("invalidate tags", tags, ErrOperation, aerr)
	}
	for _, c := range cmds {
		if c.Err() == nil && fn != nil {
			s.notifies.Add(1)
		}
	}
	if err != nil {
		return s.fail("invalidate tags", err, tags...)
	}
	return nil
}
