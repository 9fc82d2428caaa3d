package tiered

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// TestOpCtxEndsAtItsDeadline: an operation's context on
// context.Background has a deadline between RedisTimeout and RedisTimeout +
// slack from now, costs no allocation, has no values, and ends at its
// deadline with DeadlineExceeded as Err and Cause; one on a parent with
// values has the parent's values and the same end.
func TestOpCtxEndsAtItsDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const timeout = 160 * time.Millisecond
		d := newOpDeadlines(timeout)
		if want := timeout / 16; d.slack != want {
			t.Fatalf("slack %v, want %v", d.slack, want)
		}
		start := time.Now()
		ctx := d.context(context.Background())
		dl, ok := ctx.Deadline()
		if !ok || dl.Before(start.Add(timeout)) || dl.After(start.Add(timeout+d.slack)) {
			t.Fatalf("Deadline %v %v, want one in [%v, %v] from the start", dl.Sub(start), ok, timeout, timeout+d.slack)
		}
		if allocs := testing.AllocsPerRun(100, func() { _ = d.context(context.Background()) }); allocs != 0 {
			t.Errorf("a context on context.Background costs %v allocations, want 0", allocs)
		}
		type key struct{}
		valued := d.context(context.WithValue(context.Background(), key{}, "v"))
		if v := valued.Value(key{}); v != "v" {
			t.Errorf("Value %v, want the parent's %q", v, "v")
		}
		if v := ctx.Value(key{}); v != nil {
			t.Errorf("Value on context.Background's %v, want nil", v)
		}
		if vdl, _ := valued.Deadline(); !vdl.Equal(dl) || valued.Done() != ctx.Done() {
			t.Errorf("an operation begun at the same time on a parent with values: deadline %v, want the shared %v, and the same Done", vdl, dl)
		}
		time.Sleep(time.Until(dl) - time.Nanosecond)
		synctest.Wait()
		for _, c := range []context.Context{ctx, valued} {
			select {
			case <-c.Done():
				t.Fatalf("%v: Done closed %v after start, before the deadline (%v)", c, time.Since(start), dl.Sub(start))
			default:
			}
			if err := c.Err(); err != nil {
				t.Fatalf("%v: Err before the deadline: %v, want nil", c, err)
			}
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		for _, c := range []context.Context{ctx, valued} {
			select {
			case <-c.Done():
			default:
				t.Fatalf("%v: Done still open at the deadline", c)
			}
			if err := c.Err(); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%v: Err %v, want context.DeadlineExceeded", c, err)
			}
			if err := context.Cause(c); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%v: Cause %v, want context.DeadlineExceeded", c, err)
			}
		}
	})
}

// TestOpCtxSharesEnds: operations that begin within one slack of each other
// share one end (one Done channel); a later one gets a new end, which never
// closes before RedisTimeout from its start.
func TestOpCtxSharesEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const timeout = 160 * time.Millisecond
		d := newOpDeadlines(timeout) // slack 10 ms
		bg := context.Background()
		first := d.context(bg)
		time.Sleep(d.slack / 2)
		second := d.context(bg)
		if first.Done() != second.Done() {
			t.Errorf("operations %v apart got different ends, want one shared", d.slack/2)
		}
		time.Sleep(d.slack)
		thirdStart := time.Now()
		third := d.context(bg)
		if third.Done() == first.Done() {
			t.Fatalf("an operation %v after the first shares its end, which would come before RedisTimeout", 3*d.slack/2)
		}
		<-first.Done()
		if err := third.Err(); err != nil {
			t.Errorf("the later operation's Err when the earlier end came: %v, want nil", err)
		}
		<-third.Done()
		if took := time.Since(thirdStart); took < timeout || took > timeout+d.slack {
			t.Errorf("the later end came %v after its start, want within [%v, %v]", took, timeout, timeout+d.slack)
		}
	})
}

// TestOpCtxParentDeadline: a parent that has an earlier deadline (but no
// Done) keeps it; contexts derived from an opCtx end with it.
func TestOpCtxParentDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newOpDeadlines(time.Second)
		early := time.Now().Add(10 * time.Millisecond)
		ctx := d.context(deadlineOnly{Context: context.Background(), at: early})
		if dl, _ := ctx.Deadline(); !dl.Equal(early) {
			t.Fatalf("Deadline %v, want the parent's earlier %v", dl, early)
		}
		child, cancel := context.WithTimeout(ctx, time.Hour)
		defer cancel()
		<-child.Done()
		if err := child.Err(); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("derived context's Err %v, want context.DeadlineExceeded", err)
		}
		if time.Now().Before(early) {
			t.Errorf("derived context ended %v before the deadline", early.Sub(time.Now()))
		}
	})
}

// deadlineOnly is a context with a deadline and no Done.
type deadlineOnly struct {
	context.Context
	at time.Time
}

func (d deadlineOnly) Deadline() (time.Time, bool) { return d.at, true }

// TestInlinePoolWaitBoundedByRedisTimeout: a Get led inline (a ctx that
// never ends) that has to wait for a pool connection gives up after about
// RedisTimeout, not after the client's PoolTimeout: the opCtx's Done ends
// the wait.
func TestInlinePoolWaitBoundedByRedisTimeout(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1,
		PoolSize: 1, PoolTimeout: time.Minute})
	t.Cleanup(func() { _ = rdb.Close() })
	c := newCache(t, Config[string]{Redis: rdb, Namespace: "poolwait", RedisTimeout: 50 * time.Millisecond,
		BreakerFailures: NoBreaker})
	bg := context.Background()
	if err := c.Set(bg, "k", "v"); err != nil {
		t.Fatal(err)
	}
	c.invalidateLocal("k") // the next Get reads Redis
	// Hold the pool's only connection.
	conn := rdb.Conn()
	if err := conn.Ping(bg).Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	res := make(chan error, 1)
	go func() {
		_, err := c.Get(bg, "k")
		res <- err
	}()
	select {
	case err := <-res:
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("Get while the pool is taken: %v, want an error that Is ErrUnavailable", err)
		}
	case <-time.After(20 * time.Second): // far below PoolTimeout, far above RedisTimeout
		t.Fatal("Get waited for a pool connection past 20 s: RedisTimeout (50 ms) did not end the wait")
	}
}
