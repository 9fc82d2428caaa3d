package invalidation

import (
	"strings"
	"sync/atomic"
	"time"

	"github.com/nearcache/nearcache/internal/hist"
)

// Cause says why the bus asked its [Handler] to invalidate everything.
type Cause uint8

// Causes of an InvalidateAll, one bit each so that several pending causes can
// be coalesced.
const (
	CauseClear         Cause = iota // another instance cleared the namespace
	CauseGap                        // a sequence number was skipped: messages were lost
	CauseSeqReset                   // a sequence went backwards or vanished (key evicted, flushed, server reset)
	CauseLostTail                   // anti-entropy: Redis is ahead of what arrived
	CauseEpoch                      // anti-entropy: the namespace epoch key is missing or changed
	CauseServerChanged              // a server's run id changed (restart, failover), or the subscription was on another server than the commands
	CauseDisconnect                 // the subscription connection failed
	CauseResubscribe                // the subscription was confirmed again after a failure
	CauseStall                      // the subscription stopped answering pings (black hole)
	CauseOverflow                   // the receive queue was full and a message was dropped
	CauseDecode                     // a message could not be decoded
	numCauses
)

var causeNames = [numCauses]string{
	"clear", "gap", "seq_reset", "lost_tail", "epoch", "server_changed",
	"disconnect", "resubscribe", "stall", "overflow", "decode",
}

// String returns a short snake_case name, suitable as a metric label.
func (c Cause) String() string {
	if c < numCauses {
		return causeNames[c]
	}
	return "unknown"
}

// Causes lists every Cause, in order, for exporters.
func Causes() []Cause {
	cs := make([]Cause, numCauses)
	for i := range cs {
		cs[i] = Cause(i)
	}
	return cs
}

// Stats is a snapshot of a bus's counters. Counters only grow.
type Stats struct {
	Published     uint64 // messages published by [Bus.Publish] and [Bus.PublishClear]
	Received      uint64 // payloads read from the subscription
	Applied       uint64 // messages from other instances passed to the Handler
	Own           uint64 // own messages seen (sequence advanced; passed only to an OwnHandler)
	Duplicates    uint64 // Redis Cluster: further copies of a message already seen (one per master subscription)
	Dropped       uint64 // messages dropped because the receive queue was full
	Gaps          uint64 // sequence gaps detected (one per gap, however long)
	SeqResets     uint64 // sequences that went backwards
	LostTails     uint64 // partitions found behind Redis by anti-entropy
	Disconnects   uint64 // subscription failures seen by the receive loop
	Reconnects    uint64 // subscriptions confirmed again after a failure or stall
	Reroutes      uint64 // subscriptions replaced because they were on another server than the commands (failover) or the run id changed
	Stalls        uint64 // pings left unanswered (black-holed connection)
	DecodeRejects uint64 // malformed messages
	AuthRejects   uint64 // unsigned or forged messages (HMAC key set)
	AERounds      uint64 // anti-entropy rounds completed
	AEErrors      uint64 // anti-entropy rounds that failed to read Redis

	// InvalidateAll counts the Handler's InvalidateAll calls, indexed by Cause.
	InvalidateAll [numCauses]uint64

	// Lag is the propagation delay from encoding (publisher's clock) to the
	// Handler call (this instance's clock), over every message since New.
	Lag LagStats
	// LagHistogram is the same delays in fixed buckets (100µs to 10s),
	// cumulative, with their sum: for exporters.
	LagHistogram Histogram
}

// Histogram is a cumulative histogram with fixed bounds: Counts[i]
// observations were at most Bounds[i], Count is every observation and Sum
// their total (which stops at the largest Duration rather than wrap).
type Histogram = hist.Buckets

// InvalidateAllTotal is the sum of InvalidateAll over all causes.
func (s Stats) InvalidateAllTotal() uint64 {
	var n uint64
	for _, v := range s.InvalidateAll {
		n += v
	}
	return n
}

// LagStats summarises propagation delays (publish timestamp to handler).
// Percentiles are upper bounds of log-linear histogram buckets (at most 12.5%
// above the true value, never above Max).
type LagStats = hist.Percentiles

// Health is the state of the invalidation stream.
type Health struct {
	// Healthy is true while the subscription is confirmed and no loss is
	// pending repair. While false, local copies may miss invalidations.
	Healthy bool
	// UnhealthySince is when the stream last became unhealthy (zero when healthy).
	UnhealthySince time.Time
	// Reasons says why it is unhealthy (zero when healthy).
	Reasons HealthReason
}

// HealthReason is a set of reasons why the stream is unhealthy.
type HealthReason uint32

// Reasons of Health.Reasons.
const (
	NotSubscribed    HealthReason = HealthReason(reasonNotSubscribed) // not confirmed by Redis yet (starting, or a channel joining)
	Disconnected     HealthReason = HealthReason(reasonDisconnected)  // the subscription failed and is being re-established
	Stalled          HealthReason = HealthReason(reasonStalled)       // a ping went unanswered (a black-holed connection)
	Overflowed       HealthReason = HealthReason(reasonOverflow)      // the receive queue overflowed; the repair is pending
	AntiEntropyFails HealthReason = HealthReason(reasonAntiEntropy)   // anti-entropy cannot read Redis
	Rerouting        HealthReason = HealthReason(reasonRerouted)      // the subscription is moving to the server the commands go to
	RepairPending    HealthReason = HealthReason(reasonRepairPending) // a repair (InvalidateAll) is decided and not applied yet
)

var healthReasonNames = []struct {
	r    HealthReason
	name string
}{
	{NotSubscribed, "not_subscribed"}, {Disconnected, "disconnected"}, {Stalled, "stalled"},
	{Overflowed, "overflowed"}, {AntiEntropyFails, "anti_entropy_failing"}, {Rerouting, "rerouting"},
	{RepairPending, "repair_pending"},
}

// String lists the reasons, comma-separated ("" for none); each name is
// also a stable label value ("not_subscribed", "disconnected", "stalled",
// "overflowed", "anti_entropy_failing", "rerouting", "repair_pending").
func (r HealthReason) String() string {
	var b strings.Builder
	for _, n := range healthReasonNames {
		if r&n.r != 0 {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(n.name)
		}
	}
	return b.String()
}

// Names returns the name of each reason in r.
func (r HealthReason) Names() []string {
	var out []string
	for _, n := range healthReasonNames {
		if r&n.r != 0 {
			out = append(out, n.name)
		}
	}
	return out
}

// AllHealthReasons lists every reason, for exporters that report each as a
// series.
func AllHealthReasons() []HealthReason {
	out := make([]HealthReason, len(healthReasonNames))
	for i, n := range healthReasonNames {
		out[i] = n.r
	}
	return out
}

// counters are the bus's atomic counters; any goroutine may update them.
type counters struct {
	published, received, applied, own, duplicates, dropped, gaps, seqResets, lostTails atomic.Uint64
	disconnects, reconnects, reroutes, stalls, decodeRejects, authRejects              atomic.Uint64
	aeRounds, aeErrors                                                                 atomic.Uint64
	invalidateAll                                                                      [numCauses]atomic.Uint64
	lag                                                                                hist.Histogram
}

func (c *counters) snapshot() Stats {
	s := Stats{
		Published:     c.published.Load(),
		Received:      c.received.Load(),
		Applied:       c.applied.Load(),
		Own:           c.own.Load(),
		Duplicates:    c.duplicates.Load(),
		Dropped:       c.dropped.Load(),
		Gaps:          c.gaps.Load(),
		SeqResets:     c.seqResets.Load(),
		LostTails:     c.lostTails.Load(),
		Disconnects:   c.disconnects.Load(),
		Reconnects:    c.reconnects.Load(),
		Reroutes:      c.reroutes.Load(),
		Stalls:        c.stalls.Load(),
		DecodeRejects: c.decodeRejects.Load(),
		AuthRejects:   c.authRejects.Load(),
		AERounds:      c.aeRounds.Load(),
		AEErrors:      c.aeErrors.Load(),
		Lag:           c.lag.Snapshot(),
		LagHistogram:  c.lag.Buckets(),
	}
	for i := range s.InvalidateAll {
		s.InvalidateAll[i] = c.invalidateAll[i].Load()
	}
	return s
}
