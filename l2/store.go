package l2

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/hashslot"
	"github.com/nearcache/nearcache/internal/hist"
)

// Store is the shared tier: typed access to one Redis (standalone, Sentinel or
// Cluster) under a key prefix. It is safe for concurrent use.
type Store struct {
	client  redis.UniversalClient
	cluster *redis.ClusterClient // non-nil when client is a cluster client
	owns    bool                 // Close closes client (Open built it)
	cfg     Config               // with defaults; read-only after New
	prefix  string

	closed atomic.Bool

	hits, misses, sets, deletes    atomic.Uint64
	errs, timeouts, corrupt, large atomic.Uint64
	notifies, stale                atomic.Uint64
	latency                        hist.Histogram
}

// New wraps a caller's client. The Store never closes it. New does no I/O:
// call ConfigureServer to apply MaxMemory and EvictionPolicy, and note that
// the client's own timeouts apply (set ContextTimeoutEnabled on it).
func New(client redis.UniversalClient, cfg Config) (*Store, error) {
	if client == nil {
		return nil, errors.New("l2: New needs a non-nil redis client (use Open to build one from Config)")
	}
	cfg = cfg.withDefaults()
	s := &Store{client: client, cfg: cfg, prefix: cfg.KeyPrefix}
	if cc, ok := client.(*redis.ClusterClient); ok {
		s.cluster = cc
	}
	return s, nil
}

// Open builds a client from cfg, pings it, applies the server configuration
// when cfg.ApplyServerConfig is set, and returns a Store that owns the client.
// A server that cannot be reached is an error wrapping ErrConnection.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	c := cfg.withDefaults()
	readTO := c.SocketTimeout
	if readTO < 0 {
		readTO = -1
	}
	var client redis.UniversalClient
	if c.ForceCluster || (len(c.Addrs) > 1 && c.MasterName == "") {
		client = redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: c.Addrs, Username: c.Username, Password: c.Password,
			DialTimeout: c.DialTimeout, ReadTimeout: readTO, WriteTimeout: readTO,
			ContextTimeoutEnabled: true, MaxRetries: c.MaxRetries, PoolSize: c.PoolSize,
			TLSConfig: c.TLS,
		})
	} else {
		client = redis.NewUniversalClient(&redis.UniversalOptions{
			Addrs: c.Addrs, MasterName: c.MasterName, DB: c.DB,
			Username: c.Username, Password: c.Password,
			DialTimeout: c.DialTimeout, ReadTimeout: readTO, WriteTimeout: readTO,
			ContextTimeoutEnabled: true, MaxRetries: c.MaxRetries, PoolSize: c.PoolSize,
			TLSConfig: c.TLS,
		})
	}
	s, err := New(client, cfg)
	if err != nil {
		_ = client.Close()
		return nil, err
	}
	s.owns = true
	if err := s.Ping(ctx); err != nil {
		_ = client.Close()
		return nil, err
	}
	if cfg.ApplyServerConfig {
		if err := s.ConfigureServer(ctx); err != nil {
			_ = client.Close()
			return nil, err
		}
	}
	return s, nil
}

// Client returns the underlying go-redis client.
func (s *Store) Client() redis.UniversalClient { return s.client }

// Prefix returns the key prefix.
func (s *Store) Prefix() string { return s.prefix }

// IsCluster reports whether the Store talks to a Redis Cluster, where
// partitions are hash slots.
func (s *Store) IsCluster() bool { return s.cluster != nil }

// Partition returns the partition of key: its hash slot (of the prefixed
// key) on a Cluster, 0 otherwise. A notification for key must use a sequence
// key in the same slot.
func (s *Store) Partition(key string) int {
	if s.cluster == nil {
		return 0
	}
	return hashslot.Slot(s.prefix + key)
}

// ConfigureServer applies MaxMemory and EvictionPolicy with CONFIG SET (on
// every master of a Cluster). It does nothing unless Config.ApplyServerConfig
// is set. A refusal is an *Error wrapping ErrOperation that names the setting.
func (s *Store) ConfigureServer(ctx context.Context) error {
	if !s.cfg.ApplyServerConfig {
		return nil
	}
	set := func(ctx context.Context, c redis.Cmdable) error {
		if s.cfg.MaxMemory != "" {
			if err := c.ConfigSet(ctx, "maxmemory", s.cfg.MaxMemory).Err(); err != nil {
				return fmt.Errorf("CONFIG SET maxmemory %s refused (managed Redis often disables CONFIG; unset ApplyServerConfig): %w", s.cfg.MaxMemory, err)
			}
		}
		if s.cfg.EvictionPolicy != "" {
			if err := c.ConfigSet(ctx, "maxmemory-policy", s.cfg.EvictionPolicy).Err(); err != nil {
				return fmt.Errorf("CONFIG SET maxmemory-policy %s refused (managed Redis often disables CONFIG; unset ApplyServerConfig): %w", s.cfg.EvictionPolicy, err)
			}
		}
		return nil
	}
	var err error
	if s.cluster != nil {
		err = s.cluster.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return set(ctx, m) })
	} else {
		err = set(ctx, s.client)
	}
	if err != nil {
		return s.fail("config set", "", err)
	}
	return nil
}

// Ping checks that Redis answers (every master of a Cluster).
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return s.closedErr("ping", "")
	}
	var err error
	if s.cluster != nil {
		err = s.cluster.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			return m.Ping(ctx).Err()
		})
	} else {
		err = s.client.Ping(ctx).Err()
	}
	return s.fail("ping", "", err)
}

// IsConnected reports whether a Ping succeeds.
func (s *Store) IsConnected(ctx context.Context) bool { return s.Ping(ctx) == nil }

// Close releases the client if Open built it; a caller's client is left
// open. Close is idempotent; later operations return ErrClosed.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if s.owns {
		return s.client.Close()
	}
	return nil
}

// Get reads one entry. A missing (or tombstoned) key is ErrNotFound; bytes
// that are not a valid envelope are an *Error wrapping ErrCorrupt (counted),
// never a panic.
func (s *Store) Get(ctx context.Context, key string) (Entry, error) {
	e, err := s.Read(ctx, key)
	switch {
	case err != nil:
		return Entry{}, err
	case e.Tombstone:
		return Entry{}, ErrNotFound
	}
	return e, nil
}

// Read is Get for callers that replace values with SetIf: it returns
// tombstones as entries (Tombstone set), and for a corrupt value it returns
// an Entry holding only Raw, with Corrupt set, beside the error.
func (s *Store) Read(ctx context.Context, key string) (Entry, error) {
	if s.closed.Load() {
		return Entry{}, s.closedErr("get", key)
	}
	start := time.Now()
	b, err := s.client.Get(ctx, s.prefix+key).Bytes()
	s.latency.Record(time.Since(start))
	if err != nil {
		if err == redis.Nil {
			s.misses.Add(1)
			return Entry{}, ErrNotFound
		}
		return Entry{}, s.fail("get", key, err)
	}
	return s.decode(key, b)
}

// prefixAll returns the prefixed keys, sharing one backing string so a
// batch costs two allocations instead of one per key.
func (s *Store) prefixAll(keys []string) []string {
	n := 0
	for _, k := range keys {
		n += len(s.prefix) + len(k)
	}
	var b strings.Builder
	b.Grow(n)
	for _, k := range keys {
		b.WriteString(s.prefix)
		b.WriteString(k)
	}
	all := b.String()
	out := make([]string, len(keys))
	off := 0
	for i, k := range keys {
		end := off + len(s.prefix) + len(k)
		out[i] = all[off:end]
		off = end
	}
	return out
}

// decode decodes one value read for key and counts the outcome: a valid
// value is a hit, a tombstone or an unreadable value a miss.
func (s *Store) decode(key string, b []byte) (Entry, error) {
	e, err := decode(b, s.cfg.MaxValueSize)
	if err != nil {
		if errors.Is(err, ErrTooLarge) {
			s.large.Add(1)
		} else {
			s.corrupt.Add(1)
		}
		s.misses.Add(1)
		return Entry{Raw: b, Corrupt: true}, &Error{Op: "decode", Key: key, Kind: ErrOperation, Err: err}
	}
	if e.Tombstone {
		s.misses.Add(1)
	} else {
		s.hits.Add(1)
	}
	return e, nil
}

// GetMany reads several entries in one round trip: one MGET on a standalone
// server; on a Cluster one pipeline per node, run concurrently. Missing and
// tombstoned keys are absent from the map. When some entries are unreadable
// (corrupt or too large) the map holds the others and the error joins one
// *Error per bad key; when Redis fails the map is nil.
func (s *Store) GetMany(ctx context.Context, keys []string) (map[string]Entry, error) {
	entries, err := s.ReadMany(ctx, keys)
	if entries == nil {
		return nil, err
	}
	m := make(map[string]Entry, len(keys))
	for i, e := range entries {
		if e.Raw != nil && !e.Tombstone && !e.Corrupt {
			m[keys[i]] = e
		}
	}
	return m, err
}

// ReadMany is GetMany for callers that replace values with SetIf. It returns
// one Entry per key, indexed like keys: the zero Entry (Raw nil, Corrupt
// false) for an absent key; tombstones as they are; for an unreadable value
// an Entry with only Raw and Corrupt set (its error is joined in the error,
// as with GetMany). When Redis fails the slice is nil. Like Read, entries
// alias the bytes Redis returned, which nobody else holds.
func (s *Store) ReadMany(ctx context.Context, keys []string) ([]Entry, error) {
	if s.closed.Load() {
		return nil, s.closedErr("mget", "")
	}
	if len(keys) == 0 {
		return []Entry{}, nil
	}
	start := time.Now()
	var vals []any
	if s.cluster == nil {
		res, err := s.client.MGet(ctx, s.prefixAll(keys)...).Result()
		s.latency.Record(time.Since(start))
		if err != nil {
			return nil, s.fail("mget", "", err)
		}
		if len(res) != len(keys) {
			return nil, s.fail("mget", "", fmt.Errorf("MGET returned %d values for %d keys", len(res), len(keys)))
		}
		vals = res
	} else {
		vals = make([]any, len(keys))
		groups := s.groupBySlot(keys)
		all := s.prefixAll(keys)
		cmds := make([]*redis.SliceCmd, 0, len(groups))
		_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, g := range groups {
				cmds = append(cmds, p.MGet(ctx, pick(all, g.idx)...))
			}
			return nil
		})
		s.latency.Record(time.Since(start))
		if err != nil {
			return nil, s.fail("mget", "", err)
		}
		for gi, g := range groups {
			res := cmds[gi].Val()
			if len(res) != len(g.idx) {
				return nil, s.fail("mget", "", fmt.Errorf("MGET returned %d values for %d keys", len(res), len(g.idx)))
			}
			for j, i := range g.idx {
				vals[i] = res[j]
			}
		}
	}
	out := make([]Entry, len(keys))
	var bad []error
	for i, v := range vals {
		str, ok := v.(string)
		if !ok {
			s.misses.Add(1)
			continue
		}
		// The reply's string is ours alone once vals is dropped; alias it,
		// as go-redis's own StringCmd.Bytes does, instead of copying.
		e, err := s.decode(keys[i], unsafe.Slice(unsafe.StringData(str), len(str)))
		if err != nil {
			bad = append(bad, err)
		}
		if e.Raw == nil { // an empty (hence corrupt) value: still present
			e.Raw = []byte{}
		}
		out[i] = e
	}
	return out, errors.Join(bad...)
}

type slotGroup struct {
	slot int
	idx  []int // indexes into the caller's key slice
}

// groupBySlot groups key indexes by the hash slot of the prefixed key, in
// first-seen order.
func (s *Store) groupBySlot(keys []string) []slotGroup {
	at := make(map[int]int, 16)
	var groups []slotGroup
	for i, k := range keys {
		slot := hashslot.Slot(s.prefix + k)
		gi, ok := at[slot]
		if !ok {
			gi = len(groups)
			at[slot] = gi
			groups = append(groups, slotGroup{slot: slot})
		}
		groups[gi].idx = append(groups[gi].idx, i)
	}
	return groups
}

// groups partitions keys for writes: one group on a standalone server, one
// per hash slot on a Cluster.
func (s *Store) groups(keys []string) []slotGroup {
	if s.cluster != nil {
		return s.groupBySlot(keys)
	}
	all := make([]int, len(keys))
	for i := range all {
		all[i] = i
	}
	return []slotGroup{{slot: 0, idx: all}}
}

// pick returns the elements of all at the given indexes.
func pick(all []string, idx []int) []string {
	out := make([]string, len(idx))
	for j, i := range idx {
		out[j] = all[i]
	}
	return out
}

// Exists reports whether key is present (one EXISTS). A tombstone left by
// Delete with the Tombstone option counts as present until it expires,
// although Get reports it as ErrNotFound.
func (s *Store) Exists(ctx context.Context, key string) (bool, error) {
	if s.closed.Load() {
		return false, s.closedErr("exists", key)
	}
	n, err := s.client.Exists(ctx, s.prefix+key).Result()
	if err != nil {
		return false, s.fail("exists", key, err)
	}
	return n == 1, nil
}

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
	keys, vals, op, errKey, err := s.prepare(entries)
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
		err = s.runScript(ctx, keys, wo.notify, "vset", func(i int, argv []any) []any {
			return append(argv, vals[i], ttlArg(entries[keys[i]].TTL), versionArg(entries[keys[i]].Version))
		}, func(g slotGroup, v any) {
			refused.collect(keys, g, v, func(k string) uint64 { return entries[k].Version })
		})
		if err == nil {
			s.latency.Record(time.Since(start))
			s.sets.Add(uint64(len(keys) - refused.count()))
			return refused.err(op, errKey)
		}
	case wo.notify != nil:
		err = s.runScript(ctx, keys, wo.notify, "set", func(i int, argv []any) []any {
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
		return s.fail(op, errKey, err)
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
	keys, vals, op, errKey, err := s.prepare(entries)
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
			return written, s.fail(op, errKey, err)
		}
		s.sets.Add(uint64(len(written)))
		return written, nil
	}
	err = s.runScript(ctx, keys, wo.notify, "cas", func(i int, argv []any) []any {
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
		return written, s.fail(op, errKey, err)
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
func (s *Store) prepare(entries map[string]Entry) (keys []string, vals [][]byte, op, errKey string, err error) {
	op = "set"
	if len(entries) > 1 {
		op = "mset"
	}
	if s.closed.Load() {
		return nil, nil, op, "", s.closedErr(op, "")
	}
	now := time.Now()
	keys = make([]string, 0, len(entries))
	vals = make([][]byte, 0, len(entries))
	for k, e := range entries {
		b, err := s.encodeChecked(k, &e, now)
		if err != nil {
			return nil, nil, op, k, err
		}
		keys = append(keys, k)
		vals = append(vals, b)
	}
	if len(keys) == 1 {
		errKey = keys[0]
	}
	return keys, vals, op, errKey, nil
}

// versionRoom is what the write script may add to e's envelope: the 8-byte
// version it keeps from the stored value (see notifyScript).
func versionRoom(e *Entry) int {
	if e.Version != 0 {
		return 0
	}
	return 8
}

func roomNote(e *Entry) string {
	if versionRoom(e) == 0 {
		return ""
	}
	return " (+8 kept free for a version)"
}

// versionArg renders a version for the write script: 8 big-endian bytes,
// or "" for an unversioned write.
func versionArg(v uint64) string {
	if v == 0 {
		return ""
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return string(b[:])
}

// refusals collects the keys a versioned script refused.
type refusals struct {
	s     *Store
	stale *StaleError
}

func (s *Store) newRefusals() *refusals { return &refusals{s: s} }

// collect reads one group's reply: per key 1 (written) or the stored
// version that refused it.
func (r *refusals) collect(keys []string, g slotGroup, v any, offered func(string) uint64) {
	res, _ := v.([]any)
	for j, i := range g.idx {
		if j >= len(res) {
			break
		}
		stored, ok := res[j].(string)
		if !ok || len(stored) != 8 {
			continue
		}
		if r.stale == nil {
			r.stale = &StaleError{Offered: map[string]uint64{}, Stored: map[string]uint64{}}
		}
		k := keys[i]
		r.stale.Offered[k] = offered(k)
		r.stale.Stored[k] = binary.BigEndian.Uint64([]byte(stored))
	}
}

func (r *refusals) count() int {
	if r.stale == nil {
		return 0
	}
	return len(r.stale.Stored)
}

// err is the refusal as an *Error (nil if nothing was refused), counted in
// Stats.StaleRefused.
func (r *refusals) err(op, key string) error {
	if r.stale == nil {
		return nil
	}
	r.s.stale.Add(uint64(len(r.stale.Stored)))
	if key == "" && len(r.stale.Stored) == 1 {
		for k := range r.stale.Stored {
			key = k
		}
	}
	return &Error{Op: op, Key: key, Kind: ErrOperation, Err: r.stale}
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
	return s.deleteMany(ctx, "mdel", keys, opts)
}

func (s *Store) deleteMany(ctx context.Context, op string, keys []string, opts []WriteOption) (int64, error) {
	errKey := ""
	if len(keys) == 1 {
		errKey = keys[0]
	}
	if s.closed.Load() {
		return 0, s.closedErr(op, errKey)
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
		return 0, &Error{Op: op, Key: errKey, Kind: ErrOperation,
			Err: errors.New("a versioned delete needs a tombstone (WithVersion with Tombstone(ttl)) to keep the version")}
	case wo.version != 0:
		ttl := ttlArg(wo.tombstone)
		now := time.Now()
		refused := s.newRefusals()
		err = s.runScript(ctx, keys, wo.notify, "vtomb", func(_ int, argv []any) []any {
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
			return n, refused.err(op, errKey)
		}
	case wo.tombstone > 0:
		ttl := ttlArg(wo.tombstone)
		now := time.Now()
		err = s.runScript(ctx, keys, wo.notify, "tomb", func(_ int, argv []any) []any {
			var nonce [8]byte
			binary.BigEndian.PutUint64(nonce[:], rand.Uint64())
			return append(argv, encode(nil, &Entry{Tombstone: true, TTL: wo.tombstone, Value: nonce[:]}, now), ttl)
		}, count)
	case wo.notify != nil:
		err = s.runScript(ctx, keys, wo.notify, "del", nil, count)
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
		return n, s.fail(op, errKey, err)
	}
	s.deletes.Add(uint64(len(keys)))
	return n, nil
}

// Keys lists this prefix's keys matching a glob pattern (SCAN on every
// master; never KEYS), without the prefix. The pattern applies under the
// prefix: the prefix is escaped and prepended, so no pattern can reach other
// keys. An empty pattern means "*". Tombstoned keys are listed until their
// tombstones expire.
func (s *Store) Keys(ctx context.Context, pattern string) ([]string, error) {
	if s.closed.Load() {
		return nil, s.closedErr("keys", "")
	}
	if pattern == "" {
		pattern = "*"
	}
	match := globEscape(s.prefix) + pattern
	var mu sync.Mutex
	var out []string
	err := s.scan(ctx, match, func(_ redis.Cmdable, batch []string) error {
		mu.Lock()
		defer mu.Unlock()
		for _, k := range batch {
			if rest, ok := strings.CutPrefix(k, s.prefix); ok {
				out = append(out, rest)
			}
		}
		return nil
	})
	if err != nil {
		return nil, s.fail("keys", "", err)
	}
	return out, nil
}

// scan runs SCAN MATCH match on the server, or on every master of a
// Cluster concurrently, and hands each batch to fn with the node's client.
func (s *Store) scan(ctx context.Context, match string, fn func(node redis.Cmdable, batch []string) error) error {
	one := func(ctx context.Context, c redis.Cmdable) error {
		var cursor uint64
		for {
			batch, next, err := c.Scan(ctx, cursor, match, int64(s.cfg.ScanCount)).Result()
			if err != nil {
				return err
			}
			if len(batch) > 0 {
				if err := fn(c, batch); err != nil {
					return err
				}
			}
			if next == 0 {
				return nil
			}
			cursor = next
		}
	}
	if s.cluster != nil {
		return s.cluster.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return one(ctx, m) })
	}
	return one(ctx, s.client)
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
		return 0, s.closedErr("clear", "")
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
			return s.runScript(ctx, keys, wo.notifyKeys, "del", nil, func(_ slotGroup, v any) {
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
		return removed.Load(), s.fail("clear", "", err)
	}
	if wo.notify != nil {
		if err := s.runScript(ctx, nil, wo.notify, "none", nil, nil); err != nil {
			return removed.Load(), s.fail("clear", "", err)
		}
	}
	return removed.Load(), nil
}

// globEscape escapes SCAN MATCH metacharacters so s matches only itself.
func globEscape(s string) string {
	if !strings.ContainsAny(s, `*?[]\^-`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\', '^', '-':
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func (s *Store) closedErr(op, key string) error {
	return &Error{Op: op, Key: key, Kind: ErrOperation, Err: ErrClosed}
}

// fail counts and classifies an error from go-redis.
func (s *Store) fail(op, key string, err error) error {
	if err == nil {
		return nil
	}
	e := classify(op, key, err)
	s.errs.Add(1)
	if errors.Is(e, ErrTimeout) {
		s.timeouts.Add(1)
	}
	return e
}
