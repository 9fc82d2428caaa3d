package episode

import (
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	startMsg = "things failing"
	endMsg   = startMsg + EndSuffix
)

func newTracker(quiet time.Duration) (*Tracker, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return New(zap.New(core), startMsg, quiet), logs
}

// checkEnd checks that entry is the end of an episode with these figures.
func checkEnd(t *testing.T, e observer.LoggedEntry, count uint64, dur time.Duration, lastKey string, lastErr error, why string) {
	t.Helper()
	if e.Level != zapcore.InfoLevel || e.Message != endMsg {
		t.Fatalf("end entry %v %q, want Info %q", e.Level, e.Message, endMsg)
	}
	f := e.ContextMap()
	if f["count"] != count || f["duration"] != dur || f["ended"] != why || f["last_error"] != lastErr.Error() {
		t.Fatalf("end fields %v, want count %d, duration %v, ended %s, last_error %v", f, count, dur, why, lastErr)
	}
	if got, _ := f["last_key"].(string); got != lastKey {
		t.Fatalf("end last_key %q, want %q", got, lastKey)
	}
}

// TestEpisode: a run of failures logs one Warn (the first key and error)
// and, once Quiet has passed after the last one, one Info with the count,
// the span from first to last failure, and the last key and error; a
// failure before Quiet has passed extends the episode, one after it starts
// a new one.
func TestEpisode(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const quiet = 10 * time.Second
		tr, logs := newTracker(quiet)
		defer tr.Close()
		first, last := errors.New("first"), errors.New("last")
		tr.Fail("k0", first)
		for i := 0; i < 98; i++ {
			time.Sleep(time.Second) // less than quiet: the same episode
			tr.Fail("k", first)
		}
		time.Sleep(quiet - time.Nanosecond)
		tr.Fail("k99", last) // 99 s after the first
		if n := logs.Len(); n != 1 {
			t.Fatalf("%d entries during the episode, want 1 (its start): %v", n, logs.All())
		}
		if n := tr.Failures(); n != 100 {
			t.Fatalf("Failures() = %d during the episode, want 100", n)
		}
		start := logs.All()[0]
		if f := start.ContextMap(); start.Level != zapcore.WarnLevel || start.Message != startMsg || f["key"] != "k0" || f["error"] != "first" {
			t.Fatalf("start entry %v %q %v, want Warn %q with key k0 and error first", start.Level, start.Message, f, startMsg)
		}
		time.Sleep(quiet - time.Nanosecond)
		synctest.Wait()
		if n := logs.Len(); n != 1 {
			t.Fatalf("%d entries before quiet passed, want 1", n)
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if n := logs.Len(); n != 2 {
			t.Fatalf("%d entries after quiet passed, want 2 (start and end): %v", n, logs.All())
		}
		checkEnd(t, logs.All()[1], 100, 98*time.Second+quiet-time.Nanosecond, "k99", last, "quiet")
		if n := tr.Failures(); n != 0 {
			t.Fatalf("Failures() = %d after the episode, want 0", n)
		}

		tr.Fail("", first) // after the end: a new episode
		if n := logs.FilterMessage(startMsg).Len(); n != 2 {
			t.Fatalf("%d starts after a failure past the end, want 2", n)
		}
		time.Sleep(quiet)
		synctest.Wait()
		if n := logs.FilterMessage(endMsg).Len(); n != 2 {
			t.Fatalf("%d ends, want 2", n)
		}
		if _, ok := logs.All()[2].ContextMap()["key"]; ok {
			t.Fatalf("a failure without a key logged key: %v", logs.All()[2].ContextMap())
		}
		checkEnd(t, logs.All()[3], 1, 0, "", first, "quiet")
	})
}

// TestEpisodeClose: Close ends a running episode with one Info (ended
// "closed") and stops the timer; failures after Close log nothing, and a
// second Close does nothing.
func TestEpisodeClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr, logs := newTracker(time.Minute)
		boom := errors.New("boom")
		tr.Fail("a", boom)
		time.Sleep(time.Second)
		tr.Fail("b", boom)
		tr.Close()
		if n := logs.Len(); n != 2 {
			t.Fatalf("%d entries, want start and end: %v", n, logs.All())
		}
		checkEnd(t, logs.All()[1], 2, time.Second, "b", boom, "closed")
		tr.Fail("c", boom)
		tr.Close()
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if n := logs.Len(); n != 2 {
			t.Fatalf("%d entries after Close, want still 2: %v", n, logs.All())
		}
	})
}

// TestEpisodeCloseQuiet: Close between episodes logs nothing.
func TestEpisodeCloseQuiet(t *testing.T) {
	tr, logs := newTracker(0)
	if tr.Quiet() != DefaultQuiet {
		t.Fatalf("Quiet() = %v, want DefaultQuiet", tr.Quiet())
	}
	tr.Close()
	if n := logs.Len(); n != 0 {
		t.Fatalf("Close without an episode logged %d entries", n)
	}
}

// TestEpisodeFailAllocs: a failure inside a running episode allocates
// nothing.
func TestEpisodeFailAllocs(t *testing.T) {
	tr, _ := newTracker(time.Hour)
	defer tr.Close()
	boom := errors.New("boom")
	tr.Fail("k", boom)
	if n := testing.AllocsPerRun(1000, func() { tr.Fail("k", boom) }); n != 0 {
		t.Fatalf("Fail during an episode: %v allocations, want 0", n)
	}
}
