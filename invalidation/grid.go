package invalidation

import "time"

// The hub's periodic work shares its wake-ups.
//
// An idle process pays for each time it wakes up far more than for what it
// then does: on the 2-vCPU VM where the benchmarks run, a Go timer firing
// in an otherwise idle process costs about 0.25 ms of CPU, and a Redis
// round trip costs two such wake-ups (the send, the reply). So the hub's
// periodic waits (the route check, anti-entropy rounds, the masters
// watcher, a silent subscription's ping) end on the points of one grid,
// origin + k·iv, the same origin for all: waits whose intervals are
// multiples of one another (250 ms and 1 s by default) end at the same
// instants, the process wakes once for all of them, and their replies come
// back together.

// grid is the hub's schedule: its origin is the hub's start.
type grid struct {
	origin time.Time
	step   time.Duration // the smallest interval of the hub's periodic work
}

func newGrid(intervals ...time.Duration) grid {
	g := grid{origin: time.Now()}
	for _, iv := range intervals {
		if iv > 0 && (g.step == 0 || iv < g.step) {
			g.step = iv
		}
	}
	if g.step == 0 {
		g.step = DefaultPingInterval
	}
	return g
}

// after returns the first point of origin + k·iv after t (iv > 0): the next
// run of work that runs every iv, phase-locked to the grid.
func (g grid) after(t time.Time, iv time.Duration) time.Time {
	d := t.Sub(g.origin)
	if d < 0 {
		return g.origin
	}
	return g.origin.Add((d/iv + 1) * iv)
}

// fine is the grid step used for a wait of about iv: the grid's step,
// halved until at most iv/4, so that moving the wait onto the grid shifts
// it by a small part of iv. Its points include the grid's.
func (g grid) fine(iv time.Duration) time.Duration {
	s := g.step
	for s > iv/4 && s > time.Millisecond {
		s /= 2
	}
	return s
}

// slack is how early deadline may end a wait of about iv.
func (g grid) slack(iv time.Duration) time.Duration { return g.fine(iv) / 4 }

// deadline moves t, the end of a wait of about iv, onto the grid: the
// first point of origin + k·fine(iv) not before t - slack(iv). It is early
// by at most slack(iv) (iv/16) and late by less than 3·fine(iv)/4 (3iv/16):
// a wait that would have ended just after a point of the grid, such as one
// counted from a reply to something sent at that point, ends at that point
// rather than a step later.
func (g grid) deadline(t time.Time, iv time.Duration) time.Time {
	s := g.fine(iv)
	d := t.Sub(g.origin) - s/4
	if d <= 0 {
		return g.origin
	}
	return g.origin.Add((d + s - 1) / s * s)
}
