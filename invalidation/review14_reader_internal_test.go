package invalidation

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
)

// TestReview14PongGraceOffGrid: a ping answered within PingInterval (less
// the grid's slack) is never a stall, whatever the phase of the silence
// against the hub's grid; an unanswered one still is, about two
// PingIntervals into the silence. With a ping interval that is no multiple
// of the grid's fine step (1.5 s against 324 ms, from a route check every
// 648 ms), the look after the ping could land a whole step closer to it
// than one PingInterval. The test picks such a phase: its last reply (its
// own message) arrives at L, and the proxy holds the ping back for longer
// than deadline(L+2P) - deadline(L+P) but less than P - slack, or for
// good.
func TestReview14PongGraceOffGrid(t *testing.T) {
	const ping = 1500 * time.Millisecond
	for _, tc := range []struct {
		name     string
		answered bool
	}{
		{"pong within the interval", true},
		{"no pong", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.StartServer(t)
			px := redistest.StartProxy(t, srv.Addr())
			c := redis.NewClient(&redis.Options{Addr: px.Addr()})
			defer c.Close()
			h := &causeLog{}
			b, err := New(c, Config{Namespace: "t", PingInterval: ping, RouteCheckInterval: 648 * time.Millisecond, AntiEntropyInterval: -1}, h)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			ctx := context.Background()
			if err := b.Start(ctx); err != nil {
				t.Fatal(err)
			}
			g := b.hub.Load().grid
			fine, slack := g.fine(ping), g.slack(ping)
			grace := ping - slack // Config.PingInterval, at most slack early
			gap := func(l time.Time) time.Duration {
				return g.deadline(l.Add(2*ping), ping).Sub(g.deadline(l.Add(ping), ping))
			}
			// The phase, within one fine step from 100 ms on, whose window
			// of ±20 ms (the message's arrival is not exact) has the
			// smallest look-after-ping gap at its worst.
			const window = 20 * time.Millisecond
			start := time.Now().Add(100 * time.Millisecond)
			var best time.Time
			bestGap := time.Duration(1 << 62)
			for x := start; x.Before(start.Add(fine)); x = x.Add(time.Millisecond) {
				worst := time.Duration(0)
				for d := -window; d <= window; d += time.Millisecond {
					worst = max(worst, gap(x.Add(d)))
				}
				if worst < bestGap {
					best, bestGap = x, worst
				}
			}
			if grace-bestGap < 50*time.Millisecond {
				t.Fatalf("no adversarial phase: gap %v, grace %v (fine step %v)", bestGap, grace, fine)
			}
			hold := (bestGap + grace) / 2
			if tc.answered {
				px.Delay(hold, "ping")
			} else {
				defer px.Hold("ping")()
			}
			t.Logf("fine step %v, slack %v: grace %v, gap on the grid %v, pong after %v", fine, slack, grace, bestGap, hold)

			tm := time.NewTimer(time.Until(best))
			<-tm.C
			if err := b.Publish(ctx, 0, b.EncodeDelete(0, []string{"k"})); err != nil {
				t.Fatal(err)
			}
			heard := time.Now() // the message arrived before the reply to PUBLISH
			eventually(t, "the message", func() bool { return b.Stats().Received == 1 })
			if !tc.answered {
				redistest.WaitFor(t, 3*ping, "the stall", func() bool { return b.Stats().Stalls == 1 })
				// The ping leaves at most 3/4 of a step after lastHeard +
				// ping and has its interval; the look after it ends on the
				// grid, less than 3/4 of a step later again.
				silent, most := time.Since(heard), 2*ping+3*fine/2+50*time.Millisecond
				t.Logf("stall after %v of silence", silent)
				if silent > most {
					t.Errorf("stall after %v of silence, want at most %v", silent, most)
				}
				// The worker calls the Handler after the reader has
				// counted the stall.
				redistest.WaitFor(t, 5*time.Second, "InvalidateAll(stall)", func() bool { return h.has(CauseStall) })
				return
			}
			// Past the stall look of the first silence, before any of the
			// next.
			tm.Reset(time.Until(best.Add(2*ping + 300*time.Millisecond)))
			<-tm.C
			if s := b.Stats(); s.Stalls != 0 || h.has(CauseStall) {
				h.mu.Lock()
				alls := slices.Clone(h.alls)
				h.mu.Unlock()
				t.Errorf("pong %v after its ping (PingInterval %v, slack %v): stalls %d, InvalidateAll %v; want no stall", hold, ping, slack, s.Stalls, alls)
			}
			if !b.Health().Healthy {
				t.Errorf("Health: got %+v, want healthy", b.Health())
			}
		})
	}
}
