package tiered

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/nearcache/nearcache/l2"
)

// honoursDeadlines reports whether go-redis applies context deadlines to
// r's connections (ContextTimeoutEnabled). Unknown client types do not
// count.
func honoursDeadlines(r redis.UniversalClient) bool {
	switch r := r.(type) {
	case *redis.Client: // also what NewFailoverClient returns
		return r.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return r.Options().ContextTimeoutEnabled
	}
	return false // a Ring is refused by checkRouting
}

// ErrReplicaRouting reports a Config.Redis that may send reads to replicas.
// Every read that the consistency contract rests on (the L2 read after a
// fill ticket, anti-entropy's sequence and epoch keys) must see the master:
// a lagging replica would hand back a value that an applied invalidation has
// already overtaken, L1 would keep it, and nothing would repair it until
// MaxL1TTL. Give the Cache a client of its own that reads from masters.
var ErrReplicaRouting = errors.New("tiered: the Redis client may read from replicas")

// checkRouting refuses clients that route reads to replicas: Cluster
// clients with ReadOnly, RouteByLatency or RouteRandomly (which is also
// what NewFailoverClusterClient builds from FailoverOptions.ReplicaOnly and
// RouteBy*), Ring clients (whose shards share no sequence keys or
// channel), and a plain or failover client whose server reports the replica
// role (an address of a replica, FailoverOptions.ReplicaOnly). The role is
// asked once, within timeout (StartTimeout, at least minRoleWait, at most
// 2 s), or the client's
// ReadTimeout for a client without ContextTimeoutEnabled; a client with
// neither bound is not asked (the question could hang New on a server that
// never answers). A server that cannot answer is not refused: New must work
// while Redis is down.
func checkRouting(r redis.UniversalClient, timeout time.Duration) error {
	switch r := r.(type) {
	case *redis.ClusterClient:
		o := r.Options()
		if o.ReadOnly || o.RouteByLatency || o.RouteRandomly {
			return fmt.Errorf("%w: ClusterOptions ReadOnly=%v RouteByLatency=%v RouteRandomly=%v (from FailoverOptions: ReplicaOnly, RouteByLatency, RouteRandomly); "+
				"a lagging replica would refill local copies with overtaken values; build a separate client without these options for the Cache",
				ErrReplicaRouting, o.ReadOnly, o.RouteByLatency, o.RouteRandomly)
		}
	case *redis.Ring:
		return errors.New("tiered: a redis.Ring is not supported: its shards share no sequence keys and no invalidation channel; use one server, Sentinel, or Redis Cluster")
	case *redis.Client:
		if o := r.Options(); !o.ContextTimeoutEnabled && o.ReadTimeout <= 0 {
			return nil // nothing bounds the question: it could hang New on a silent server
		}
		wait := 2 * time.Second
		if timeout > 0 {
			wait = max(min(timeout, wait), minRoleWait)
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		role, err := r.Do(ctx, "ROLE").Slice()
		if err != nil || len(role) == 0 {
			return nil // unreachable, or a server without ROLE: nothing to tell
		}
		if kind, _ := role[0].(string); kind == "slave" || kind == "replica" {
			return fmt.Errorf("%w: the server at %s answers ROLE with %q; give the Cache the master's address, or a failover client without ReplicaOnly",
				ErrReplicaRouting, r.Options().Addr, kind)
		}
	}
	return nil
}

// minRoleWait is the least time the ROLE question gets, however short
// StartTimeout is: a deadline shorter than a round trip would let a replica
// through. It costs nothing unless the server does not answer.
const minRoleWait = 100 * time.Millisecond

// redisCtx bounds one Redis operation by RedisTimeout. On a context that
// can never end (an inline leader's, see canLeadInline; a write on
// context.Background) the bound is an end shared with the operations begun
// about the same time, which costs no timer of its own and no allocation
// on context.Background (see opDeadlines); on any other context,
// context.WithTimeout, which also watches the parent. An operation of a
// flight (flight true) on a context that can never end is one of a flight
// led inline, which has no other deadline: it is bounded by LoadTimeout too
// when that is shorter, as it would be on the detached context of a flight
// run by DoChan.
func (c *Cache[V]) redisCtx(ctx context.Context, flight bool) (context.Context, context.CancelFunc) {
	switch {
	case c.cfg.RedisTimeout < 0:
		return ctx, noCancel
	case ctx.Done() == nil && flight:
		return c.flightDeadlines.context(ctx), noCancel
	case ctx.Done() == nil:
		return c.opDeadlines.context(ctx), noCancel
	}
	return context.WithTimeout(ctx, c.cfg.RedisTimeout)
}

// noCancel is the CancelFunc of a context that needs no cancelling.
func noCancel() {}

// errBreakerOpen is what a Redis operation skipped by the open circuit
// breaker returns.
var errBreakerOpen = fmt.Errorf("%w (circuit breaker open)", ErrUnavailable)

// redisOp runs one Redis operation of the Cache's own shared work (a
// flight's L2 read or write-back, on a context the Cache owns) through the
// circuit breaker, bounded by RedisTimeout (fn gets the bounded context):
// while the breaker is open it is skipped (counted) and returns
// errBreakerOpen; otherwise its outcome is recorded, so every call the
// breaker lets through, including a half-open probe, settles the breaker.
// The flight's own deadline (LoadTimeout) ending a call is a failure of
// Redis like RedisTimeout.
func (c *Cache[V]) redisOp(ctx context.Context, fn func(ctx context.Context) error) error {
	return c.redisCall(ctx, false, true, fn)
}

// callerOp is redisOp for a call on the caller's ctx (writes): a caller
// whose ctx has already ended sends nothing and gets the ctx's error, and
// an error while the caller's ctx has ended says nothing about Redis (an
// HTTP handler out of budget must not open the breaker for everyone). It
// is not recorded; a half-open probe it held is released at once.
func (c *Cache[V]) callerOp(ctx context.Context, bounded bool, fn func(ctx context.Context) error) error {
	return c.redisCall(ctx, true, bounded, fn)
}

func (c *Cache[V]) redisCall(ctx context.Context, caller, bounded bool, fn func(ctx context.Context) error) error {
	if caller {
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	if !c.brk.allow() {
		c.st.l2Skipped.Add(1)
		return errBreakerOpen
	}
	var err error
	if bounded {
		rctx, cancel := c.redisCtx(ctx, !caller)
		err = fn(rctx)
		cancel()
	} else {
		err = fn(ctx)
	}
	if caller && err != nil && ctx.Err() != nil {
		c.brk.release()
		return err
	}
	c.recordRedis(err)
	return err
}

// recordRedis tells the breaker whether err means Redis is unreachable: any
// failure except an answer from Redis (l2.ErrOperation, a server error
// reply) and a cancellation (Close).
func (c *Cache[V]) recordRedis(err error) {
	conn := err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, l2.ErrNotFound) &&
		!errors.Is(err, l2.ErrOperation) && !isReply(err)
	if changed, state := c.brk.record(conn); changed {
		c.log.Warn("nearcache: redis circuit breaker changed state", zap.Stringer("state", state), zap.Error(err))
	}
}

// isReply reports whether err is an error reply from Redis. (A function of
// its own, so that the target of errors.As is allocated only on errors.)
func isReply(err error) bool {
	var reply redis.Error
	return errors.As(err, &reply)
}
