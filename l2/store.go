package l2

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	batches, batched               atomic.Uint64 // Batcher scripts of several writes, and those writes
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
				return fmt.Errorf("maxmemory %s refused (managed Redis often disables CONFIG; unset ApplyServerConfig): %w", s.cfg.MaxMemory, err)
			}
		}
		if s.cfg.EvictionPolicy != "" {
			if err := c.ConfigSet(ctx, "maxmemory-policy", s.cfg.EvictionPolicy).Err(); err != nil {
				return fmt.Errorf("maxmemory-policy %s refused (managed Redis often disables CONFIG; unset ApplyServerConfig): %w", s.cfg.EvictionPolicy, err)
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
		return s.fail("config set", err)
	}
	return nil
}

// Ping checks that Redis answers (every master of a Cluster).
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return s.closedErr("ping")
	}
	var err error
	if s.cluster != nil {
		err = s.cluster.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			return m.Ping(ctx).Err()
		})
	} else {
		err = s.client.Ping(ctx).Err()
	}
	return s.fail("ping", err)
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
	b, err := s.get(ctx, key).Bytes()
	s.latency.Record(time.Since(start))
	if err != nil {
		if err == redis.Nil {
			s.misses.Add(1)
			return Entry{}, ErrNotFound
		}
		return Entry{}, s.fail("get", err, key)
	}
	return s.decode(key, b)
}

// getArgs holds what a GET of one prefixed key needs beside its command,
// in one allocation: the command's arguments, the prefixed key, and the
// key's bytes when they fit in buf. The key argument is a *string, which
// go-redis writes, and routes by (the hash slot on a Cluster), as the
// string it points to; a string argument would cost an allocation to box
// it and one to build it, on every L2 read. TestReadRoutesByPrefixedKey
// pins both the bytes sent and the routing.
type getArgs struct {
	args [2]any
	key  string
	buf  [64]byte
}

// get sends GET of key (prefixed) and returns its command.
func (s *Store) get(ctx context.Context, key string) *redis.StringCmd {
	a := new(getArgs)
	if n := len(s.prefix) + len(key); n <= len(a.buf) {
		copy(a.buf[copy(a.buf[:], s.prefix):], key)
		a.key = unsafe.String(&a.buf[0], n) // buf is never written again
	} else {
		a.key = s.prefix + key
	}
	a.args = [2]any{"get", &a.key}
	cmd := redis.NewStringCmd(ctx, a.args[:]...)
	_ = s.client.Process(ctx, cmd)
	return cmd
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
	var e Entry
	err := s.decodeInto(&e, key, b)
	return e, err
}

// decodeInto is decode writing the entry into *e (see decodeInto).
func (s *Store) decodeInto(e *Entry, key string, b []byte) error {
	if err := decodeInto(e, b, s.cfg.MaxValueSize); err != nil {
		if errors.Is(err, ErrTooLarge) {
			s.large.Add(1)
		} else {
			s.corrupt.Add(1)
		}
		s.misses.Add(1)
		*e = Entry{Raw: b, Corrupt: true}
		return &Error{Op: "decode", Key: key, Kind: ErrOperation, Err: err}
	}
	if e.Tombstone {
		s.misses.Add(1)
	} else {
		s.hits.Add(1)
	}
	return nil
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
	if len(keys) == 0 && !s.closed.Load() {
		return []Entry{}, nil
	}
	return s.AppendReadMany(ctx, nil, keys)
}

// AppendReadMany is ReadMany appending the entries to dst, for callers that
// reuse one slice across batches: it returns dst extended by one Entry per
// key, indexed like keys from len(dst) on, and the same errors as
// ReadMany. When Redis fails it returns dst unchanged. The entries appended
// alias the bytes Redis returned, as with ReadMany; a caller that keeps dst
// should clear them once it is done, so that the reply can be freed.
func (s *Store) AppendReadMany(ctx context.Context, dst []Entry, keys []string) ([]Entry, error) {
	if s.closed.Load() {
		return dst, s.closedErr("mget", keys...)
	}
	if len(keys) == 0 {
		return dst, nil
	}
	start := time.Now()
	var vals []any
	if s.cluster == nil {
		res, err := s.client.MGet(ctx, s.prefixAll(keys)...).Result()
		s.latency.Record(time.Since(start))
		if err != nil {
			return dst, s.fail("mget", err, keys...)
		}
		if len(res) != len(keys) {
			return dst, s.fail("mget", fmt.Errorf("MGET returned %d values for %d keys", len(res), len(keys)), keys...)
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
			return dst, s.fail("mget", err, keys...)
		}
		for gi, g := range groups {
			res := cmds[gi].Val()
			if len(res) != len(g.idx) {
				return dst, s.fail("mget", fmt.Errorf("MGET returned %d values for %d keys", len(res), len(g.idx)), keys...)
			}
			for j, i := range g.idx {
				vals[i] = res[j]
			}
		}
	}
	base := len(dst)
	dst = slices.Grow(dst, len(keys))[:base+len(keys)]
	out := dst[base:]
	var bad []error
	for i, v := range vals {
		str, ok := v.(string)
		if !ok {
			s.misses.Add(1)
			out[i] = Entry{}
			continue
		}
		// The reply's string is ours alone once vals is dropped; alias it,
		// as go-redis's own StringCmd.Bytes does, instead of copying.
		e := &out[i]
		if err := s.decodeInto(e, keys[i], unsafe.Slice(unsafe.StringData(str), len(str))); err != nil {
			bad = append(bad, err)
		}
		if e.Raw == nil { // an empty (hence corrupt) value: still present
			e.Raw = []byte{}
		}
	}
	return dst, errors.Join(bad...)
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
		return false, s.fail("exists", err, key)
	}
	return n == 1, nil
}

// Keys lists this prefix's keys matching a glob pattern (SCAN on every
// master; never KEYS), without the prefix. The pattern applies under the
// prefix: the prefix is escaped and prepended, so no pattern can reach other
// keys. An empty pattern means "*". Tombstoned keys are listed until their
// tombstones expire.
func (s *Store) Keys(ctx context.Context, pattern string) ([]string, error) {
	if s.closed.Load() {
		return nil, s.closedErr("keys")
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
		return nil, s.fail("keys", err)
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

func (s *Store) closedErr(op string, keys ...string) error {
	return newError(op, keys, ErrOperation, ErrClosed)
}

// fail counts and classifies an error from go-redis of operation op on
// keys (none for a server operation).
func (s *Store) fail(op string, err error, keys ...string) error {
	if err == nil {
		return nil
	}
	e := classify(op, keys, err)
	s.errs.Add(1)
	if errors.Is(e, ErrTimeout) {
		s.timeouts.Add(1)
	}
	return e
}
