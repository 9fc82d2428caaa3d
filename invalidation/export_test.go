package invalidation

import (
	"context"
	"time"

	"github.com/nearcache/nearcache/internal/wire"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/episode"
)

// SetTestDrop installs the drop hook: f is asked about every decoded
// message; true drops it as if the network had lost it.
func SetTestDrop(cfg *Config, f func(partition int, seq uint64) bool) { cfg.testDrop = f }

// PublishPipelined queues on pipe what Publish does (the script that stores
// the next sequence and PUBLISHes body with it), for tests that publish on
// thousands of partitions at once.
func (b *Bus) PublishPipelined(ctx context.Context, pipe redis.Pipeliner, partition int, body []byte) {
	n := b.notification(partition, body)
	keys, argv := wire.Args(nil, &n)
	wire.PublishScript.Eval(ctx, pipe, keys, argv...)
}

// Messages of the bus's episodes (see Config.Logger).
const (
	MsgAEFails     = msgAEFails
	MsgTopoFails   = msgTopoFails
	MsgDecodeFails = msgDecodeFails
)

// SetEpisodeQuiet makes the bus's episodes end after d without a failure
// instead of the default; call it before Start.
// (and those of the transport it creates, if it is the first on its
// client).
func SetEpisodeQuiet(b *Bus, d time.Duration) {
	b.cfg.testEpisodeQuiet = d
	b.decodeFails = episode.New(b.log, msgDecodeFails, d)
}

// TopoFailures returns how many failed listings of the cluster's masters
// the running episode of b's transport has counted.
func TopoFailures(b *Bus) uint64 { return b.hub.Load().topoFails.Failures() }

// checkSequences runs the sequence check of one anti-entropy round for b
// alone and returns how many keys it read.
func (b *Bus) checkSequences(ctx context.Context) (int, error) {
	drain := func(context.Context) bool { return false }
	if h := b.hub.Load(); h != nil {
		drain = h.drain
	}
	return checkSequences(ctx, b.client, []*Bus{b}, drain)
}
