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
func SetEpisodeQuiet(b *Bus, d time.Duration) {
	b.aeFails = episode.New(b.log, msgAEFails, d)
	b.topoFails = episode.New(b.log, msgTopoFails, d)
	b.decodeFails = episode.New(b.log, msgDecodeFails, d)
}

// TopoFailures returns how many failed listings of the cluster's masters
// the running episode has counted.
func TopoFailures(b *Bus) uint64 { return b.topoFails.Failures() }
