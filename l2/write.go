package l2

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/hashslot"
	"github.com/nearcache/nearcache/internal/wire"
)

// ttlArg renders a TTL for SET PX: at least 1 ms, "0" for none.
func ttlArg(d time.Duration) string {
	if d <= 0 {
		return "0"
	}
	ms := d.Milliseconds()
	if ms < 1 {
		ms = 1
	}
	return strconv.FormatInt(ms, 10)
}

// CheckSize returns the error a write of e under key would fail with
// because its encoded form exceeds Config.MaxValueSize: an *Error wrapping
// ErrOperation and ErrTooLarge that names the key, the encoded size and the
// limit. It returns nil if e fits. A refusal is counted in Stats.TooLarge,
// as a refused write is. It does no I/O; a caller writing a batch uses it to
// leave out the values that would otherwise fail the whole batch (SetMany
// and SetManyIf write nothing when one entry is too large).
func (s *Store) CheckSize(key string, e Entry) error {
	_, err := s.checkSize(key, &e)
	return err
}

// checkSize returns e's encoded size, or the ErrTooLarge error (counted).
func (s *Store) checkSize(key string, e *Entry) (int, error) {
	if len(e.Tags) > MaxTags {
		return 0, &Error{Op: "set", Key: key, Kind: ErrOperation,
			Err: fmt.Errorf("%d tags, limit %d (l2.MaxTags)", len(e.Tags), MaxTags)}
	}
	n := encodedLen(e)
	// An unversioned write may be given the stored version by the write
	// script (8 bytes): the limit must hold for that form too.
	if limit := s.cfg.MaxValueSize; limit > 0 && n+versionRoom(e) > limit {
		s.large.Add(1)
		return n, &Error{Op: "set", Key: key, Kind: ErrOperation,
			Err: fmt.Errorf("%w: encoded %d bytes%s, limit %d (Config.MaxValueSize)", ErrTooLarge, n, roomNote(e), s.cfg.MaxValueSize)}
	}
	return n, nil
}

func (s *Store) encodeChecked(key string, e *Entry, now time.Time) ([]byte, error) {
	n, err := s.checkSize(key, e)
	if err != nil {
		return nil, err
	}
	return encode(make([]byte, 0, n), e, now), nil
}

// Set writes one entry. With Notify it runs as one Lua script that writes the
// key, increments the partition's sequence key and publishes the
// notification, all or nothing.
func (s *Store) Set(ctx context.Context, key string, e Entry, opts ...WriteOption) error {
	return s.SetMany(ctx, map[string]Entry{key: e}, opts...)
}

// SetMany writes several entries in one round trip (pipelined; on a Cluster
// one pipeline per node). With Notify each partition's keys are written by
// one script together with that partition's notification. Every entry is
// encoded before anything is sent: if one exceeds Config.MaxValueSize,
// SetMany writes nothing and returns its ErrTooLarge error (see CheckSize).
func (s *Store) SetMany(ctx context.Context, entries map[string]Entry, opts ...WriteOption) error {
	keys, vals, op, err := s.prepare(entries)
	if err != nil || len(keys) == 0 {
		return err
	}
	wo := applyWrite(opts)
	start := time.Now()
	versioned := false
	for _, e := range entries {
		versioned = versioned || e.Version != 0
	}
	switch {
	case versioned:
		refused := s.newRefusals()
		err = s.runScript(ctx, keys, wo.notify, vsetScript, func(i int, argv []any) []any {
			return append(argv, vals[i], ttlArg(entries[keys[i]].TTL), versionArg(entries[keys[i]].Version))
		}, func(g slotGroup, v any) {
			refused.collect(keys, g, v, func(k string) uint64 { return entries[k].Version })
		})
		if err == nil {
			s.latency.Record(time.Since(start))
			s.sets.Add(uint64(len(keys) - refused.count()))
			return refused.err(op, keys)
		}
	case wo.notify != nil:
		err = s.runScript(ctx, keys, wo.notify, setScript, func(i int, argv []any) []any {
			return append(argv, vals[i], ttlArg(entries[keys[i]].TTL))
		}, nil)
	case len(keys) == 1:
		err = s.client.Set(ctx, s.prefix+keys[0], vals[0], nonNeg(entries[keys[0]].TTL)).Err()
	default:
		_, err = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, k := range keys {
				p.Set(ctx, s.prefix+k, vals[i], nonNeg(entries[k].TTL))
			}
			return nil
		})
	}
	s.latency.Record(time.Since(start))
	if err != nil {
		return s.fail(op, err, keys...)
	}
	s.sets.Add(uint64(len(keys)))
	return nil
}

// SetIf writes e only if the key still holds exactly old (the Raw bytes of
// an earlier Read), or, with old == nil, only if the key is absent; a
// tombstone counts as present. It reports whether it wrote. With Notify the
// notification is published only if the write happened. This is how a
// loaded value is stored without overwriting a newer write or a delete that
// happened while it was being loaded.
func (s *Store) SetIf(ctx context.Context, key string, e Entry, old []byte, opts ...WriteOption) (bool, error) {
	w, err := s.SetManyIf(ctx, map[string]Entry{key: e}, map[string][]byte{key: old}, opts...)
	return w[key], err
}

// SetManyIf is SetIf for several keys in one round trip; old[k] is the
// expected value of key k (nil or missing: absent). It returns which keys
// were written. Like SetMany, it writes nothing if one entry exceeds
// Config.MaxValueSize.
func (s *Store) SetManyIf(ctx context.Context, entries map[string]Entry, old map[string][]byte, opts ...WriteOption) (map[string]bool, error) {
	keys, vals, op, err := s.prepare(entries)
	if err != nil || len(keys) == 0 {
		return nil, err
	}
	wo := applyWrite(opts)
	written := make(map[string]bool, len(keys))
	start := time.Now()
	if wo.notify == nil && allAbsent(keys, old) {
		// Plain SET NX does it in one command per key, no script.
		err = s.setNX(ctx, keys, vals, entries, written)
		s.latency.Record(time.Since(start))
		if err != nil {
			return written, s.fail(op, err, keys...)
		}
		s.sets.Add(uint64(len(written)))
		return written, nil
	}
	err = s.runScript(ctx, keys, wo.notify, casScript, func(i int, argv []any) []any {
		return append(argv, vals[i], ttlArg(entries[keys[i]].TTL), old[keys[i]])
	}, func(g slotGroup, v any) {
		flags, _ := v.([]any)
		for j, i := range g.idx {
			if j < len(flags) {
				if f, _ := flags[j].(int64); f == 1 {
					written[keys[i]] = true
				}
			}
		}
	})
	s.latency.Record(time.Since(start))
	if err != nil {
		return written, s.fail(op, err, keys...)
	}
	s.sets.Add(uint64(len(written)))
	return written, nil
}

func allAbsent(keys []string, old map[string][]byte) bool {
	for _, k := range keys {
		if old[k] != nil {
			return false
		}
	}
	return true
}

// setNX writes keys that are absent with SET NX (pipelined when several)
// and records which were written.
func (s *Store) setNX(ctx context.Context, keys []string, vals [][]byte, entries map[string]Entry, written map[string]bool) error {
	if len(keys) == 1 {
		ok, err := s.client.SetNX(ctx, s.prefix+keys[0], vals[0], nonNeg(entries[keys[0]].TTL)).Result()
		written[keys[0]] = ok
		return err
	}
	cmds := make([]*redis.BoolCmd, len(keys))
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.SetNX(ctx, s.prefix+k, vals[i], nonNeg(entries[k].TTL))
		}
		return nil
	})
	for i, c := range cmds {
		if c.Val() {
			written[keys[i]] = true
		}
	}
	return err
}

// prepare encodes entries (checking MaxValueSize) in a fixed key order.
func (s *Store) prepare(entries map[string]Entry) (keys []string, vals [][]byte, op string, err error) {
	op = "set"
	if len(entries) > 1 {
		op = "mset"
	}
	if s.closed.Load() {
		if len(entries) == 1 {
			for k := range entries {
				return nil, nil, op, s.closedErr(op, k)
			}
		}
		return nil, nil, op, s.closedErr(op)
	}
	now := time.Now()
	keys = make([]string, 0, len(entries))
	vals = make([][]byte, 0, len(entries))
	for k, e := range entries {
		b, err := s.encodeChecked(k, &e, now)
		if err != nil {
			return nil, nil, op, err
		}
		keys = append(keys, k)
		vals = append(vals, b)
	}
	return keys, vals, op, nil
}

func nonNeg(d time.Duration) time.Duration {
	if d < 0 {
		return 0
	}
	if d > 0 && d < time.Millisecond {
		return time.Millisecond
	}
	return d
}

// Delete removes one key and reports whether it existed. With Notify the
// delete and the notification run as one script; with Tombstone the key is
// replaced by a short-lived tombstone.
func (s *Store) Delete(ctx context.Context, key string, opts ...WriteOption) (bool, error) {
	n, err := s.deleteMany(ctx, "del", []string{key}, opts)
	return n == 1, err
}

// DeleteMany removes keys in one round trip and returns how many existed.
func (s *Store) DeleteMany(ctx context.Context, keys []string, opts ...WriteOption) (int64, error) {
	op := "mdel"
	if len(keys) == 1 {
		op = "del" // as SetMany of one entry is a "set"
	}
	return s.deleteMany(ctx, op, keys, opts)
}

func (s *Store) deleteMany(ctx context.Context, op string, keys []string, opts []WriteOption) (int64, error) {
	if s.closed.Load() {
		return 0, s.closedErr(op, keys...)
	}
	if len(keys) == 0 {
		return 0, nil
	}
	wo := applyWrite(opts)
	start := time.Now()
	var n int64
	count := func(_ slotGroup, v any) {
		c, _ := v.(int64)
		n += c
	}
	var err error
	switch {
	case wo.version != 0 && wo.tombstone <= 0:
		return 0, newError(op, keys, ErrOperation,
			errors.New("a versioned delete needs a tombstone (WithVersion with Tombstone(ttl)) to keep the version"))
	case wo.version != 0:
		ttl := ttlArg(wo.tombstone)
		now := time.Now()
		refused := s.newRefusals()
		err = s.runScript(ctx, keys, wo.notify, vtombScript, func(_ int, argv []any) []any {
			var nonce [8]byte
			binary.BigEndian.PutUint64(nonce[:], rand.Uint64())
			e := Entry{Tombstone: true, TTL: wo.tombstone, Value: nonce[:], Version: wo.version}
			return append(argv, encode(nil, &e, now), ttl, versionArg(wo.version))
		}, func(g slotGroup, v any) {
			refused.collect(keys, g, v, func(string) uint64 { return wo.version })
			flags, _ := v.([]any)
			for _, f := range flags {
				if x, _ := f.(int64); x == 1 {
					n++ // tombstoned a key that existed
				}
			}
		})
		if err == nil {
			s.latency.Record(time.Since(start))
			s.deletes.Add(uint64(len(keys)))
			return n, refused.err(op, keys)
		}
	case wo.tombstone > 0:
		ttl := ttlArg(wo.tombstone)
		now := time.Now()
		err = s.runScript(ctx, keys, wo.notify, tombScript, func(_ int, argv []any) []any {
			return append(argv, tombstoneBytes(wo.tombstone, now), ttl)
		}, count)
	case wo.notify != nil:
		err = s.runScript(ctx, keys, wo.notify, delScript, nil, count)
	default:
		groups := s.groups(keys)
		all := s.prefixAll(keys)
		cmds := make([]*redis.IntCmd, 0, len(groups))
		_, err = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, g := range groups {
				cmds = append(cmds, p.Unlink(ctx, pick(all, g.idx)...))
			}
			return nil
		})
		for _, c := range cmds {
			n += c.Val()
		}
	}
	s.latency.Record(time.Since(start))
	if err != nil {
		return n, s.fail(op, err, keys...)
	}
	s.deletes.Add(uint64(len(keys)))
	return n, nil
}

// tombstoneBytes encodes an unversioned tombstone living ttl from now. Its
// random nonce makes each tombstone's bytes unique, so that a
// compare-and-set against one read earlier never matches a later one.
func tombstoneBytes(ttl time.Duration, now time.Time) []byte {
	var nonce [8]byte
	binary.BigEndian.PutUint64(nonce[:], rand.Uint64())
	return encode(nil, &Entry{Tombstone: true, TTL: ttl, Value: nonce[:]}, now)
}

// Clear removes every key under the prefix (SCAN + UNLINK in batches; never
// FLUSHDB) and returns how many it removed. It refuses to run with an empty
// KeyPrefix, which would mean the whole database. With Notify the
// notification (built with partition 0 and no keys) is published after the
// last batch, atomically with its sequence increment. With NotifyKeys each
// batch is removed by the write script, which publishes the batch's own
// notification with its UNLINK: a batch that runs late (the call timed out,
// the command was already sent) still tells every instance. Clear is not atomic
// with respect to concurrent writers: a key written while it runs may stay.
func (s *Store) Clear(ctx context.Context, opts ...WriteOption) (int64, error) {
	if s.closed.Load() {
		return 0, s.closedErr("clear")
	}
	if s.prefix == "" {
		return 0, &Error{Op: "clear", Kind: ErrOperation,
			Err: errors.New("refusing to clear without a KeyPrefix: it would remove every key in the database")}
	}
	var removed atomic.Int64
	wo := applyWrite(opts)
	err := s.scan(ctx, globEscape(s.prefix)+"*", func(node redis.Cmdable, batch []string) error {
		if wo.notifyKeys != nil {
			keys := make([]string, 0, len(batch))
			for _, k := range batch {
				if rest, ok := strings.CutPrefix(k, s.prefix); ok {
					keys = append(keys, rest)
				}
			}
			return s.runScript(ctx, keys, wo.notifyKeys, delScript, nil, func(_ slotGroup, v any) {
				n, _ := v.(int64)
				removed.Add(n)
			})
		}
		var cmds []*redis.IntCmd
		_, err := node.Pipelined(ctx, func(p redis.Pipeliner) error {
			if s.cluster == nil {
				cmds = append(cmds, p.Unlink(ctx, batch...))
				return nil
			}
			// One node holds many slots; UNLINK must stay within one slot.
			bySlot := map[int][]string{}
			for _, k := range batch {
				sl := hashslot.Slot(k)
				bySlot[sl] = append(bySlot[sl], k)
			}
			for _, ks := range bySlot {
				cmds = append(cmds, p.Unlink(ctx, ks...))
			}
			return nil
		})
		for _, c := range cmds {
			removed.Add(c.Val())
		}
		return err
	})
	if err != nil {
		return removed.Load(), s.fail("clear", err)
	}
	if wo.notify != nil {
		if err := s.runScript(ctx, nil, wo.notify, wire.PublishScript, nil, nil); err != nil {
			return removed.Load(), s.fail("clear", err)
		}
	}
	return removed.Load(), nil
}
