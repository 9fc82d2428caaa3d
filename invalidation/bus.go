package invalidation

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/nearcache/nearcache/internal/episode"
	"github.com/nearcache/nearcache/internal/wire"
)

// Errors returned by the bus.
var (
	ErrClosed    = errors.New("invalidation: bus closed")
	ErrStarted   = errors.New("invalidation: bus already started")
	ErrNilClient = errors.New("invalidation: nil redis client")
	ErrNilHandle = errors.New("invalidation: nil handler")
)

// Handler receives invalidations. The bus calls it from a single goroutine,
// never concurrently, and never for the bus's own messages (see
// [OwnHandler]). Calls should be quick (the worker applies messages in order
// behind them).
type Handler interface {
	// InvalidateKeys drops the local copies of keys (namespace not
	// prefixed). keys is only valid during the call.
	InvalidateKeys(keys []string)
	// InvalidateAll drops every local copy: some invalidation may have been
	// lost, or another instance cleared the namespace.
	InvalidateAll(cause Cause)
}

// TagHandler is implemented by a Handler that also wants tag invalidations
// (op 3): tags whose version moved on, so that entries stamped with their
// old versions are no longer current. It gets them from every instance,
// its own included (an own invalidation whose script ran late, after a
// timeout, must still reach the local tag versions). A Handler without it
// drops its whole local cache on a tag invalidation from another instance.
type TagHandler interface {
	// InvalidateTags reports tags whose versions changed (valid during
	// the call).
	InvalidateTags(tags []string)
}

// OwnHandler is implemented by a Handler that also wants the bus's own
// messages (same origin id), from the same goroutine: a writer whose write
// timed out does not know whether its script ran, and may run later, after
// the writer refilled the old value; its own message is then the only thing
// that can tell it. Messages from other instances never reach these methods.
type OwnHandler interface {
	// OwnKeys reports an own delete message's keys (valid during the call).
	OwnKeys(keys []string)
	// OwnClear reports an own clear-all message.
	OwnClear()
}

// Bus publishes and receives sequenced invalidation messages of one
// namespace over Redis pub/sub and detects their loss. Create it with
// [New], start receiving with [Bus.Start], stop with [Bus.Close]. All
// methods are safe for concurrent use.
//
// Started buses on the same Redis client share their transport (see
// [Bus.Start]): one subscription connection per server, one worker, one
// anti-entropy loop.
type Bus struct {
	client  redis.UniversalClient
	cluster *redis.ClusterClient // non-nil when client is a cluster client
	cfg     Config
	h       Handler
	own     OwnHandler // h, if it wants own messages; else nil
	log     *zap.Logger
	channel string

	stats  counters
	health healthState

	// decodeFails: payloads that did not decode, or were too large, without
	// an HMAC key (each invalidates everything); logged once per episode.
	decodeFails *episode.Tracker

	// pending holds 1<<Cause bits of InvalidateAll requests not yet applied;
	// any goroutine sets them, the hub's worker swaps them out.
	pending atomic.Uint32

	trackMu sync.Mutex
	last    map[int]track // guarded by trackMu: sequence state per partition

	// multiPath: every message arrives once per subscription (Redis
	// Cluster: one per master), so the worker deduplicates by sequence
	// and waits gapGrace before calling a missing sequence lost.
	multiPath bool
	gapGrace  time.Duration
	gapDue    time.Time // worker only: earliest deadline of a hole created by the last handle

	ae memberAE // the hub's anti-entropy goroutine only

	// lifeMu guards started and closed, and is held by Start while it
	// joins the hub (which does no I/O), so that Close sees the hub a
	// Start before it joined and releases it.
	lifeMu  sync.Mutex
	started bool // Start was called
	closed  bool // Close was called
	done    chan struct{}
	hub     atomic.Pointer[hub] // set once Start has joined

	// Guarded by the hub's mu: the subscriptions (ids) whose confirmation
	// of this bus's channel Start still awaits; confirmed is closed once
	// none is left and the hub's subscriptions are known.
	awaiting        map[int]struct{}
	confirmedClosed bool
	confirmed       chan struct{}
	startReturned   atomic.Bool // Start gave up or succeeded; later first confirmations are repairs
}

// track is the sequence state of one partition.
type track struct {
	last uint64 // highest sequence accounted for (applied, or repaired by anti-entropy)
	// (lateLo, lateHi] are sequences that anti-entropy declared lost and
	// repaired; if they arrive after all, they are late, not a reset. The
	// window closes when a later sequence arrives. Standalone only.
	lateLo, lateHi uint64
	// holes are the sequences below last that have not arrived yet, in
	// increasing order, each with the time it is declared lost. Redis
	// Cluster only (see observe).
	holes []hole
	// Redis Cluster only (see trackMulti): paths holds, per subscription,
	// the highest sequence it delivered; a subscription delivering one at
	// or below that went backwards (anomaly), which makes the partition
	// suspect until anti-entropy has read its sequence key. anomalies
	// counts them, so that anti-entropy clears only what it has seen.
	// touched: a copy arrived since anti-entropy last collected the
	// partition.
	paths     []pathSeq
	anomalies uint32
	suspect   bool
	touched   bool
}

// subscriber opens pub/sub connections: *redis.Client, *redis.ClusterClient.
type subscriber interface {
	Subscribe(ctx context.Context, channels ...string) *redis.PubSub
}

// sub is one subscription: a dedicated pub/sub connection and the reader
// goroutine that owns it.
type sub struct {
	id      int        // health source (> 0)
	addr    string     // the master's address on Redis Cluster; "" otherwise
	client  subscriber // the caller's client, or one of its cluster node clients; never closed by the bus
	cancel  context.CancelFunc
	done    chan struct{} // closed when the reader has returned
	ps      *redis.PubSub // guarded by hub.mu; replaced by the reader on stalls
	stopped bool          // guarded by hub.mu
	// chans holds the state of every member channel on ps (guarded by
	// hub.mu); each is subscribed once per connection, by the I/O
	// goroutine, which io (cap 1) wakes.
	chans map[string]*chanState
	io    chan struct{}
	// slots are the slots whose shard channels s carries (Redis Cluster,
	// sharded pub/sub: the slots its master owns; see shard.go). Guarded
	// by hub.mu; replaced, never modified, except by lostShard.
	slots map[int]struct{}
	// ownUnsub counts, per shard channel, the bus's own SUNSUBSCRIBEs
	// sent on ps whose reply has not been read: Redis replies to each,
	// and such a reply read after the slot was wanted again is not its
	// master dropping it (see shardLeft). Reset with ps. Guarded by h.mu.
	ownUnsub map[string]int

	// live is true from a confirmation of the route channel's
	// subscription until the reader or the route check sees the
	// connection fail; confirms counts those confirmations. The reader
	// writes both, the route check reads them to know that a PUBSUB NUMSUB
	// it sent saw one settled subscription. Unused without a route
	// channel.
	live     atomic.Bool
	confirms atomic.Uint64
	// fails counts the failures of the connection the reader, the route
	// check or a replacement saw; pingSub gives up when it moves. Unlike
	// live it does not need the route channel, which anti-entropy's drain
	// does without (route check off).
	fails atomic.Uint64
	// pingSent numbers the route check's PINGs on the subscription (the
	// number is the PING's payload); pong is the highest number the reader
	// got back, and pongCh (cap 1) wakes the route check when it does.
	pingSent atomic.Uint64
	pong     atomic.Uint64
	pongCh   chan struct{}
	// replace is set (with hub.mu held, before ps is closed) when the
	// route check wants the subscription replaced: the reader, woken by
	// the closed PubSub, subscribes again instead of waiting for go-redis.
	replace atomic.Bool
}

// pokeIO wakes the subscription's I/O goroutine (see hub.reconcile).
func (s *sub) pokeIO() {
	select {
	case s.io <- struct{}{}:
	default:
	}
}

type item struct {
	payload string
	channel string
	recv    time.Time
	path    int // the id of the subscription it came from
}

// New returns a bus for the namespace in cfg. It does no I/O; call
// [Bus.Start] to subscribe. The client is shared, never closed by the bus.
func New(client redis.UniversalClient, cfg Config, h Handler) (*Bus, error) {
	if client == nil {
		return nil, ErrNilClient
	}
	if h == nil {
		return nil, ErrNilHandle
	}
	cfg = cfg.withDefaults()
	if cfg.InstanceID == (InstanceID{}) {
		if _, err := rand.Read(cfg.InstanceID[:]); err != nil {
			return nil, err
		}
	}
	if cfg.HMACKey != nil {
		cfg.HMACKey = append([]byte(nil), cfg.HMACKey...)
	}
	b := &Bus{
		client:    client,
		cfg:       cfg,
		h:         h,
		log:       cfg.Logger.Named("invalidation"),
		channel:   wire.Channel(cfg.Namespace),
		last:      make(map[int]track),
		confirmed: make(chan struct{}),
		done:      make(chan struct{}),
	}
	b.own, _ = h.(OwnHandler)
	b.cluster, _ = client.(*redis.ClusterClient)
	b.multiPath = b.cluster != nil
	b.gapGrace = gapGrace(cfg.AntiEntropyInterval)
	quiet := max(episode.DefaultQuiet, 3*cfg.AntiEntropyInterval)
	if cfg.testEpisodeQuiet > 0 {
		quiet = cfg.testEpisodeQuiet
	}
	b.decodeFails = episode.New(b.log, msgDecodeFails, quiet)
	b.health.set(busWide, reasonNotSubscribed)
	return b, nil
}

// Channel is the pub/sub channel of the namespace.
func (b *Bus) Channel() string { return b.channel }

// InstanceID is the id this bus stamps on its messages.
func (b *Bus) InstanceID() InstanceID { return b.cfg.InstanceID }

// SeqKey is the sequence key of a partition: hash-tagged to the partition's
// slot, so that a script touching a data key of that slot and this key stays
// single-slot on Redis Cluster. The tag comes first, so braces in the
// namespace cannot move the key. A partition outside [0, 16384) is reduced
// modulo 16384.
func (b *Bus) SeqKey(partition int) string { return wire.SeqKey(b.cfg.Namespace, partition) }

// EncodeDelete returns the body of a message that invalidates keys (without
// the namespace prefix) in partition, to be published with the partition's
// sequence appended (by l2's scripts or [Bus.Publish]). A body that would
// exceed MaxBodySize becomes a clear-all.
func (b *Bus) EncodeDelete(partition int, keys []string) []byte {
	return encode(b.cfg.InstanceID, wire.Partition(partition), opDelete, time.Now().UnixNano(), keys, b.cfg.HMACKey)
}

// EncodeClear returns the body of a message that makes every other instance
// drop its whole local cache.
func (b *Bus) EncodeClear(partition int) []byte {
	return encode(b.cfg.InstanceID, wire.Partition(partition), opClear, time.Now().UnixNano(), nil, b.cfg.HMACKey)
}

// Notification is what a write publishes with it: see [Bus.NotifyDelete].
// It is the same type as l2.Notification.
type Notification = wire.Notification

// NotifyDelete is the notification that invalidates keys (without the
// namespace prefix) of partition: the channel, the partition's sequence key
// and EncodeDelete's body. It has the shape of l2.NotifyFunc, so l2's write
// scripts publish it with their writes.
func (b *Bus) NotifyDelete(partition int, keys []string) Notification {
	return b.notification(partition, b.EncodeDelete(partition, keys))
}

// EncodeTags returns the body of a message that tells every instance that
// tags have new versions (see l2.Store.InvalidateTags); one that would
// exceed MaxBodySize becomes a clear-all.
func (b *Bus) EncodeTags(partition int, tags []string) []byte {
	return encode(b.cfg.InstanceID, wire.Partition(partition), opTags, time.Now().UnixNano(), tags, b.cfg.HMACKey)
}

// NotifyTags is the notification of EncodeTags, in NotifyDelete's shape:
// the partition is the tags' slot (see wire.TagSlot), the keys are tags.
func (b *Bus) NotifyTags(partition int, tags []string) Notification {
	return b.notification(partition, b.EncodeTags(partition, tags))
}

// NotifyClear is the notification that makes every other instance drop its
// whole local cache (keys are ignored), in NotifyDelete's shape.
func (b *Bus) NotifyClear(partition int, _ []string) Notification {
	return b.notification(partition, b.EncodeClear(partition))
}

// notification is body on the partition's channel: its shard channel on
// Redis Cluster (see shard.go), unless DisableShardedPubSub.
func (b *Bus) notification(partition int, body []byte) wire.Notification {
	ch := b.channel
	if b.cluster != nil && !b.cfg.DisableShardedPubSub {
		ch = wire.ShardOf(ch, partition)
	}
	return wire.Notification{Channel: ch, SeqKey: b.SeqKey(partition), Body: body}
}

// Publish atomically increments the partition's sequence key and publishes
// body (from EncodeDelete or EncodeClear for the same partition) with the new
// sequence appended. It needs no Start.
func (b *Bus) Publish(ctx context.Context, partition int, body []byte) error {
	if b.isClosed() {
		return ErrClosed
	}
	err := wire.Publish(ctx, b.client, b.notification(partition, body))
	if err != nil {
		return fmt.Errorf("invalidation: publish: %w", err)
	}
	b.stats.published.Add(1)
	return nil
}

// PublishClear publishes a clear-all on partition 0.
func (b *Bus) PublishClear(ctx context.Context) error {
	return b.Publish(ctx, 0, b.EncodeClear(0))
}

// Health reports whether the stream is healthy: a single atomic load while
// it is; while it is not, a short lock that reads the reasons and their
// time together.
func (b *Bus) Health() Health { return b.health.get() }

// Healthy is Health().Healthy, at the cost of one atomic load.
func (b *Bus) Healthy() bool { return b.health.since.Load() == 0 }

// Stats returns a snapshot of the counters.
func (b *Bus) Stats() Stats { return b.stats.snapshot() }

func (b *Bus) isClosed() bool {
	b.lifeMu.Lock()
	defer b.lifeMu.Unlock()
	return b.closed
}

// Start subscribes the bus and returns once Redis has confirmed the
// subscription. If ctx ends first, Start returns ctx's error but the bus
// keeps trying in the background (Health stays unhealthy, and the eventual
// confirmation invalidates everything) until Close. Start may be called
// once.
//
// Buses started on the same client, with the same AntiEntropyInterval,
// PingInterval, RouteCheckInterval and BufferSize, share one transport:
// one subscription connection per server (per master on Redis Cluster)
// carrying each namespace's channel, one worker that calls every bus's
// Handler in turn, one anti-entropy loop whose Redis commands do not grow
// with the number of buses, one route check and one masters watcher. The
// first bus to start creates it, the last to close stops it. Each bus keeps
// its own namespace, instance id, HMAC key, sequence tracking, Handler,
// counters and health; a failure of a shared connection reaches every bus.
// The transport logs its own events (a connection interrupted or moved, a
// server or master set changed, failed rounds) to the Logger of the bus
// that created it.
func (b *Bus) Start(ctx context.Context) error {
	b.lifeMu.Lock()
	if b.closed {
		b.lifeMu.Unlock()
		return ErrClosed
	}
	if b.started {
		b.lifeMu.Unlock()
		return ErrStarted
	}
	b.started = true
	h := acquireHub(b)
	b.hub.Store(h)
	b.lifeMu.Unlock()
	if b.pending.Load() != 0 {
		h.poke() // requested while joining, before b knew its hub
	}

	defer b.startReturned.Store(true)
	select {
	case <-b.confirmed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-b.done:
		return ErrClosed
	}
}

// Close stops the bus: its Handler is never called after Close returns.
// The last bus of a shared transport (see [Bus.Start]) stops its
// goroutines, closes its subscription connections and waits for them;
// another leaves it, and the transport's I/O goroutine unsubscribes its
// channel once no other bus of the same namespace is left (Close does not
// wait for that UNSUBSCRIBE). It never closes the
// client (nor, on Redis Cluster, the client's node clients). It is
// idempotent.
//
// A subscription still being opened cannot be interrupted: with a client
// that has no read timeout and a server that never answers, its goroutine
// stays blocked in go-redis. The last Close waits for it at most
// CloseWait, then returns an error saying so; the goroutine ends when the
// client gives up or is closed. Otherwise Close returns nil.
func (b *Bus) Close() error {
	b.lifeMu.Lock()
	if b.closed {
		b.lifeMu.Unlock()
		return nil
	}
	b.closed = true
	close(b.done)
	h := b.hub.Load()
	b.lifeMu.Unlock()
	defer b.decodeFails.Close()
	if h == nil {
		return nil
	}
	return h.release(b)
}

// CloseWait bounds how long Close waits for the bus's goroutines.
const CloseWait = 2 * time.Second

// requestInvalidateAll asks the worker to call InvalidateAll(c) soon.
//
// The stream is unhealthy (RepairPending) from the request until the worker
// has called the Handler, so that Health never reports healthy while a
// decided repair is not applied (a confirmation that clears the other
// reasons races with the worker). The bit is set after pending and cleared
// by applyPending only when nothing is pending, both under the health lock.
func (b *Bus) requestInvalidateAll(c Cause) {
	b.pending.Or(1 << c)
	b.health.set(busWide, reasonRepairPending)
	if h := b.hub.Load(); h != nil {
		h.poke()
	}
}

// isNoPerm reports whether err is Redis refusing a command for the user's
// ACL permissions.
func isNoPerm(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && strings.HasPrefix(re.Error(), "NOPERM")
}

// applyPending calls InvalidateAll for the pending causes. Worker only.
func (b *Bus) applyPending() {
	defer b.health.clearIf(busWide, reasonRepairPending, func() bool { return b.pending.Load() == 0 })
	m := b.pending.Swap(0)
	if m == 0 {
		return
	}
	for c := Cause(0); c < numCauses; c++ {
		if m&(1<<c) != 0 {
			b.stats.invalidateAll[c].Add(1)
			b.h.InvalidateAll(c)
		}
	}
	if m&(1<<CauseOverflow) != 0 {
		b.health.clear(busWide, reasonOverflow)
	}
}

// handle decodes, tracks and delivers one message. keys is a decode buffer
// (may be nil); handle returns it for the next message.
func (b *Bus) handle(it item, keys []string) []string {
	m, err := decode(it.payload, b.cfg.HMACKey, keys[:0])
	if cap(m.keys) <= maxKeptKeys {
		keys = m.keys[:0]
	}
	b.handleDecoded(it, m, err)
	return keys
}

func (b *Bus) handleDecoded(it item, m message, err error) {
	if err != nil {
		if errors.Is(err, errAuth) {
			b.stats.authRejects.Add(1)
			b.log.Debug("rejected unauthenticated message", zap.Int("bytes", len(it.payload)))
			return
		}
		b.stats.decodeRejects.Add(1)
		b.decodeFails.Fail("", fmt.Errorf("%w (%d bytes)", err, len(it.payload)))
		b.requestInvalidateAll(CauseDecode)
		b.applyPending()
		return
	}
	if b.cfg.testDrop != nil && b.cfg.testDrop(m.partition, m.seq) {
		return
	}
	if b.multiPath {
		if !b.trackMulti(m.partition, it.path, m.seq) {
			b.stats.duplicates.Add(1)
			return
		}
		b.deliver(m)
		return
	}
	b.trackMu.Lock()
	tr, seen := b.last[m.partition]
	prev := tr.last
	late := m.seq > tr.lateLo && m.seq <= tr.lateHi && m.seq <= tr.last
	if !late {
		tr = track{last: m.seq}
		b.last[m.partition] = tr
	}
	b.trackMu.Unlock()
	switch {
	case late || !seen || m.seq == prev+1:
	case m.seq > prev+1:
		b.stats.gaps.Add(1)
		b.log.Info("sequence gap", zap.Int("partition", m.partition), zap.Uint64("after", prev), zap.Uint64("got", m.seq))
		b.requestInvalidateAll(CauseGap)
	default:
		b.stats.seqResets.Add(1)
		b.log.Info("sequence went backwards", zap.Int("partition", m.partition), zap.Uint64("after", prev), zap.Uint64("got", m.seq))
		b.requestInvalidateAll(CauseSeqReset)
	}
	b.deliver(m)
}

// deliver passes a tracked message to the Handler; an own message only to
// an OwnHandler.
func (b *Bus) deliver(m message) {
	b.applyPending()
	if m.op == opTags {
		if m.origin == b.cfg.InstanceID {
			b.stats.own.Add(1)
		} else {
			b.stats.lag.Record(time.Since(time.Unix(0, m.unixNanos)))
			b.stats.applied.Add(1)
		}
		if th, ok := b.h.(TagHandler); ok {
			th.InvalidateTags(m.keys)
		} else if m.origin != b.cfg.InstanceID {
			b.stats.invalidateAll[CauseClear].Add(1)
			b.h.InvalidateAll(CauseClear)
		}
		return
	}
	if m.origin == b.cfg.InstanceID {
		b.stats.own.Add(1)
		if b.own != nil {
			switch m.op {
			case opDelete:
				b.own.OwnKeys(m.keys)
			case opClear:
				b.own.OwnClear()
			}
		}
		return
	}
	b.stats.lag.Record(time.Since(time.Unix(0, m.unixNanos)))
	switch m.op {
	case opDelete:
		b.h.InvalidateKeys(m.keys)
	case opClear:
		b.stats.invalidateAll[CauseClear].Add(1)
		b.h.InvalidateAll(CauseClear)
	}
	b.stats.applied.Add(1)
}
