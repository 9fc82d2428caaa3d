package l2

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/redistest"
)

// batchStore opens a Store through a proxy (to hold its scripts) and a raw
// client to the server itself.
func batchStore(t *testing.T) (*Store, *redistest.Proxy, *redistest.Server) {
	srv := redistest.StartServer(t)
	px := redistest.StartProxy(t, srv.Addr())
	return openStore(t, Config{Addrs: []string{px.Addr()}, KeyPrefix: "b:", SocketTimeout: 10 * time.Second, MaxRetries: NoRetries}), px, srv
}

// batchLaneState reads a lane's in-flight scripts and queued writes.
func (b *Batcher) laneState(slot int) (inflight, queued int) {
	return b.laneStateOf(laneKey{slot: slot})
}

func (b *Batcher) laneStateOf(key laneKey) (inflight, queued int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if l := b.lanes[key]; l != nil {
		return l.inflight, len(l.queue)
	}
	return 0, 0
}

// TestBatcherOverlappingWritesShareOneNotification: a lone write runs at
// once, alone; writes that arrive while it is in flight queue and go as one
// script with one notification naming all their keys (here sent because
// the queue reached maxBatchKeys, the window being an hour); each is
// acknowledged only after that script returned, and every value is written.
func TestBatcherOverlappingWritesShareOneNotification(t *testing.T) {
	s, px, srv := batchStore(t)
	next := subscribe(t, srv.Client(), "inv")
	b := s.NewBatcher(testNotify("inv"), time.Hour)
	defer b.Close()
	ctx := context.Background()
	release := px.Hold("evalsha", "first")
	firstDone := make(chan error, 1)
	go func() { firstDone <- b.SetMany(ctx, map[string]Entry{"first": {Value: []byte("1")}}) }()
	redistest.WaitFor(t, 10*time.Second, "the first write to be in flight", func() bool {
		in, _ := b.laneState(0)
		return in == 1
	})
	const writers, perWrite = 20, 26 // 20·26 = 520 keys: the 20th write fills the batch
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for w := range writers {
		entries := map[string]Entry{}
		for k := range perWrite {
			entries[fmt.Sprintf("w%02d-%02d", w, k)] = Entry{Value: []byte(fmt.Sprint(w))}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = b.SetMany(ctx, entries)
		}()
		if w < writers-1 {
			redistest.WaitFor(t, 10*time.Second, "the write to queue", func() bool {
				_, q := b.laneState(0)
				return q == w+1
			})
		}
	}
	wg.Wait() // the batch ran although the first write is still held
	for w, err := range errs {
		if err != nil {
			t.Fatalf("write %d: %v", w, err)
		}
	}
	select {
	case err := <-firstDone:
		t.Fatalf("the held write returned %v before its script ran", err)
	default:
	}
	msg, ok := next()
	if !ok {
		t.Fatal("no notification for the batch")
	}
	if n := strings.Count(msg, ","); n != writers*perWrite-1 {
		t.Fatalf("the batch's notification names %d keys, want %d: %.80q...", n+1, writers*perWrite, msg)
	}
	release()
	if err := <-firstDone; err != nil {
		t.Fatal(err)
	}
	if msg, ok := next(); !ok || !strings.Contains(msg, "|first|") {
		t.Fatalf("the lone write's notification = %q, %v", msg, ok)
	}
	n, err := srv.Client().DBSize(ctx).Result()
	if err != nil || n != writers*perWrite+1+1 { // + the sequence key
		t.Fatalf("DBSIZE = %d, %v; want %d values and the sequence key", n, err, writers*perWrite+1)
	}
	st := s.Stats()
	if st.Batches != 1 || st.BatchedWrites != writers || st.Notifications != 2 || st.Sets != writers*perWrite+1 {
		t.Fatalf("stats: %d batches of %d writes, %d notifications, %d sets; want 1, %d, 2, %d",
			st.Batches, st.BatchedWrites, st.Notifications, st.Sets, writers, writers*perWrite+1)
	}
}

// TestBatcherWindowBoundsTheWait: a write queued behind one that is held
// is sent when its window closes, without waiting for the held one.
func TestBatcherWindowBoundsTheWait(t *testing.T) {
	s, px, srv := batchStore(t)
	next := subscribe(t, srv.Client(), "inv")
	b := s.NewBatcher(testNotify("inv"), 50*time.Millisecond)
	defer b.Close()
	ctx := context.Background()
	release := px.Hold("evalsha", "held")
	defer release()
	heldDone := make(chan error, 1)
	go func() { heldDone <- b.SetMany(ctx, map[string]Entry{"held": {Value: []byte("1")}}) }()
	redistest.WaitFor(t, 10*time.Second, "the held write to be in flight", func() bool {
		in, _ := b.laneState(0)
		return in == 1
	})
	if err := b.SetMany(ctx, map[string]Entry{"queued": {Value: []byte("2")}}); err != nil {
		t.Fatalf("the queued write: %v", err)
	}
	if msg, ok := next(); !ok || !strings.Contains(msg, "|queued|") {
		t.Fatalf("the queued write's notification = %q, %v", msg, ok)
	}
	release()
	if err := <-heldDone; err != nil {
		t.Fatal(err)
	}
}

// TestBatcherCallerDeadline: a queued write whose context ends returns its
// context's error, naming the key, without waiting for the batch.
func TestBatcherCallerDeadline(t *testing.T) {
	s, px, _ := batchStore(t)
	b := s.NewBatcher(testNotify("inv"), time.Hour)
	defer b.Close()
	release := px.Hold("evalsha", "held")
	heldDone := make(chan error, 1)
	go func() {
		heldDone <- b.SetMany(context.Background(), map[string]Entry{"held": {Value: []byte("1")}})
	}()
	redistest.WaitFor(t, 10*time.Second, "the held write to be in flight", func() bool {
		in, _ := b.laneState(0)
		return in == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := b.SetMany(ctx, map[string]Entry{"late": {Value: []byte("2")}})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "late") {
		t.Fatalf("a queued write past its deadline = %v; want DeadlineExceeded naming the key", err)
	}
	release()
	if err := <-heldDone; err != nil {
		t.Fatal(err)
	}
}

// TestBatcherDeletes: deletes that overlap share one script and one
// notification, and leave tombstones (a later SetIf "only if absent" does
// not write over them); a lone delete runs alone.
func TestBatcherDeletes(t *testing.T) {
	s, px, srv := batchStore(t)
	ctx := context.Background()
	for i := range 5 {
		if err := s.Set(ctx, fmt.Sprint("d", i), Entry{Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	next := subscribe(t, srv.Client(), "inv")
	b := s.NewBatcher(testNotify("inv"), 200*time.Millisecond)
	defer b.Close()
	release := px.Hold("evalsha", "d0")
	firstDone := make(chan error, 1)
	go func() { firstDone <- b.DeleteMany(ctx, []string{"d0"}, time.Minute) }()
	del := laneKey{del: true}
	redistest.WaitFor(t, 10*time.Second, "the first delete to be in flight", func() bool {
		in, _ := b.laneStateOf(del)
		return in == 1
	})
	var wg sync.WaitGroup
	for i := 1; i < 5; i++ {
		wg.Go(func() {
			if err := b.DeleteMany(ctx, []string{fmt.Sprint("d", i)}, time.Minute); err != nil {
				t.Errorf("delete d%d: %v", i, err)
			}
		})
	}
	wg.Wait()
	msg, ok := next()
	if !ok || strings.Count(msg, ",") != 3 {
		t.Fatalf("the batch's notification = %q, %v; want one naming d1..d4", msg, ok)
	}
	release()
	if err := <-firstDone; err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		k := fmt.Sprint("d", i)
		if e, err := s.Read(ctx, k); err != nil || !e.Tombstone {
			t.Fatalf("Read(%s) after the delete = %+v, %v; want a tombstone", k, e, err)
		}
		if _, err := s.Get(ctx, k); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get(%s) after the delete = %v, want ErrNotFound", k, err)
		}
		if wrote, err := s.SetIf(ctx, k, Entry{Value: []byte("late")}, nil); err != nil || wrote {
			t.Fatalf("SetIf(%s, absent) over the tombstone = %v, %v; want refused", k, wrote, err)
		}
	}
	if st := s.Stats(); st.Batches != 1 || st.BatchedWrites != 4 || st.Deletes != 5 {
		t.Fatalf("stats: %d batches of %d writes, %d deletes; want 1, 4, 5", st.Batches, st.BatchedWrites, st.Deletes)
	}
}
