package invalidation

import (
	"context"

	"github.com/nearcache/nearcache/internal/wire"
	"github.com/redis/go-redis/v9"
)

// SetTestDrop installs the drop hook: f is asked about every decoded
// message; true drops it as if the network had lost it.
func SetTestDrop(cfg *Config, f func(partition int, seq uint64) bool) { cfg.testDrop = f }

// PublishPipelined queues on pipe what Publish does (the sequence INCR and
// the PUBLISH of body with the new sequence), for tests that publish on
// thousands of partitions at once.
func (b *Bus) PublishPipelined(ctx context.Context, pipe redis.Pipeliner, partition int, body []byte) {
	n := b.notification(partition, body)
	keys, argv := wire.Args(nil, &n)
	wire.PublishScript.Eval(ctx, pipe, keys, argv...)
}
