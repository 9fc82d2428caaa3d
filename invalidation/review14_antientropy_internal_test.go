package invalidation

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
)

// pipelineTimes records when each pipeline of a client starts (on one
// server, one per anti-entropy round: see readAhead).
type pipelineTimes struct {
	mu sync.Mutex
	at []time.Time // guarded by mu
}

func (p *pipelineTimes) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (p *pipelineTimes) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (p *pipelineTimes) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		p.mu.Lock()
		p.at = append(p.at, time.Now())
		p.mu.Unlock()
		return next(ctx, cmds)
	}
}

func (p *pipelineTimes) since(t time.Time) []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []time.Time
	for _, at := range p.at {
		if !at.Before(t) {
			out = append(out, at)
		}
	}
	return out
}

// TestReview14AEOverrunRunsNextRoundAtOnce: a round that outlasts
// AntiEntropyInterval (here its drain waits for a slow pong, as under load)
// is followed at once by the next one, as a ticker's pending tick would
// have it, not a whole interval later at the next point of the grid: the
// sequence keys are read at least every max(interval, round) so that a
// loss just after the long round's read is repaired in time.
func TestReview14AEOverrunRunsNextRoundAtOnce(t *testing.T) {
	const (
		iv   = 200 * time.Millisecond
		slow = 260 * time.Millisecond // the drain's pong: the round overruns iv
	)
	srv := redistest.StartServer(t)
	px := redistest.StartProxy(t, srv.Addr())
	c := redis.NewClient(&redis.Options{Addr: px.Addr()})
	defer c.Close()
	pt := &pipelineTimes{}
	c.AddHook(pt)
	h := &causeLog{}
	cfg := Config{Namespace: "t", AntiEntropyInterval: iv, RouteCheckInterval: -1, PingInterval: time.Minute}
	cfg.testDrop = func(p int, seq uint64) bool { return seq == 2 } // a lost tail
	b, err := New(c, cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, 0, b.EncodeDelete(0, []string{"k"})); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the first message", func() bool { return b.Stats().Own == 1 })
	eventually(t, "two rounds", func() bool { return b.Stats().AERounds >= 2 })
	px.Delay(slow, "ping") // the drain's PING on the subscription
	from := time.Now()
	if err := b.Publish(ctx, 0, b.EncodeDelete(0, []string{"k"})); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the lost tail", func() bool { return b.Stats().LostTails == 1 })
	r := b.Stats().AERounds
	eventually(t, "three more rounds", func() bool { return b.Stats().AERounds >= r+3 })

	at := pt.since(from)
	overran := false
	for i := 1; i < len(at); i++ {
		d := at[i].Sub(at[i-1])
		overran = overran || d >= slow
		if d > slow+60*time.Millisecond {
			t.Errorf("round %d began %v after the one before (interval %v, longest round about %v): want at most %v",
				i, d, iv, slow, slow+60*time.Millisecond)
		}
	}
	if !overran {
		t.Fatalf("no round outlasted the interval (round starts %v)", at)
	}
	// The worker calls the Handler after the round has decided.
	eventually(t, "InvalidateAll(lost_tail)", func() bool { return h.has(CauseLostTail) })
}
