package invalidation_test

import (
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/internal/wire"
	"github.com/nearcache/nearcache/invalidation"
)

// docShardScript is docs/WIRE.md's publish script with the page's
// SPUBLISH ending in place of its PUBLISH ending: what the page tells a
// program outside the Caches to run on Redis Cluster.
func docShardScript(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile("../docs/WIRE.md")
	if err != nil {
		t.Fatal(err)
	}
	var pub, tail string
	lines := strings.SplitAfter(string(raw), "\n")
	for i := 0; i < len(lines); i++ {
		if strings.TrimSpace(lines[i]) != "```lua" {
			continue
		}
		marker := ""
		if i > 0 {
			marker = strings.TrimSpace(lines[i-1])
		}
		var body strings.Builder
		for i++; i < len(lines) && strings.TrimSpace(lines[i]) != "```"; i++ {
			body.WriteString(lines[i])
		}
		switch text := body.String(); {
		case marker == "<!-- script: publish -->":
			pub = text
		case strings.Contains(text, "SPUBLISH"):
			tail = text
		}
	}
	const plainTail = "redis.call('SET', seqkey, s)\nredis.call('PUBLISH', ARGV[1], ARGV[2] .. s)\nreturn res\n"
	if pub == "" || tail == "" || !strings.HasSuffix(pub, plainTail) {
		t.Fatalf("docs/WIRE.md: want the publish script ending with\n%s\nand a lua block with SPUBLISH to replace that ending", plainTail)
	}
	return strings.TrimSuffix(pub, plainTail) + tail
}

// TestReview2DocShardScriptDuringMigration: docs/WIRE.md told a program
// outside the Caches that it may end its publish script with a bare
// redis.call('SPUBLISH', ...) on the shard channel. While a slot is being
// migrated, a write of its moved keys runs (ASK) on the importing node,
// where no Cache can SSUBSCRIBE the slot before it owns it: the page's
// SPUBLISH reaches no one, while every Cache stays healthy on the source.
// The Caches' own frame falls back to PUBLISH on NS:inv when SPUBLISH
// reached no one (TestShardMessageDuringSlotMigration); the page's ending
// must do the same, or the Cache must turn unhealthy.
func TestReview2DocShardScriptDuringMigration(t *testing.T) {
	script := docShardScript(t)
	cl := redistest.StartCluster(t)
	c := cl.Client()
	ctx := context.Background()
	p, from, to := slotToMove(t, cl, 13)
	rb := newRecorder()
	b := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: time.Hour, Logger: zaptest.NewLogger(t)}, rb)
	a, err := invalidation.New(c, invalidation.Config{Namespace: "t"}, newRecorder()) // the outside program's encoder: never started
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	run := func(key string) {
		t.Helper()
		if err := c.Eval(ctx, script, []string{wire.SeqKey("t", p)}, wire.ShardChannel("t", p), a.EncodeDelete(p, []string{key})).Err(); err != nil {
			t.Fatalf("EVAL of the page's SPUBLISH script: %v", err)
		}
	}
	run("before") // creates the slot's sequence key on its master
	waitFor(t, 5*time.Second, "B to apply the first message", func() bool { return slices.Contains(rb.Keys(), "before") })
	waitFor(t, 5*time.Second, "B healthy", func() bool { return b.Health().Healthy })

	id := func(s *redistest.Server) string {
		v, err := s.Client().ClusterMyID(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	do := func(s *redistest.Server, args ...any) {
		t.Helper()
		if err := s.Client().Do(ctx, args...).Err(); err != nil {
			t.Fatalf("%v on %s: %v", args, s.Addr(), err)
		}
	}
	fromID, toID := id(from), id(to)
	do(to, "CLUSTER", "SETSLOT", p, "IMPORTING", fromID)
	do(from, "CLUSTER", "SETSLOT", p, "MIGRATING", toID)
	keys, err := from.Client().ClusterGetKeysInSlot(ctx, p, 1000).Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("keys in slot %d: %v %v", p, keys, err)
	}
	args := []any{"MIGRATE", "127.0.0.1", strconv.Itoa(to.Port()), "", 0, 5000, "KEYS"}
	for _, k := range keys {
		args = append(args, k)
	}
	do(from, args...)
	t.Cleanup(func() {
		for _, s := range cl.Masters {
			_ = s.Client().Do(ctx, "CLUSTER", "SETSLOT", p, "NODE", toID).Err()
		}
	})

	run("during") // ASK: runs on the importing target
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if slices.Contains(rb.Keys(), "during") || !b.Health().Healthy {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("a write by the page's SPUBLISH script during the slot's migration: B neither applied its invalidation nor turned unhealthy within 3s (health %+v, InvalidateAll %v)",
		b.Health(), rb.Alls())
}

// TestReview2ReopenKeepsOtherNamespaces: two namespaces share a cluster
// client, so one hub and one subscription per master. Closing the bus of
// one namespace unsubscribes its shard channels (an SUNSUBSCRIBE per
// slot); a bus of the same namespace started right after subscribes them
// again. The replies to the bus's own SUNSUBSCRIBEs, read after the new
// SSUBSCRIBEs were planned, are not a master dropping a slot: the other
// namespace's bus must neither repair nor turn unhealthy.
func TestReview2ReopenKeepsOtherNamespaces(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := cl.Client()
	ru := newRecorder()
	u := startBus(t, c, invalidation.Config{Namespace: "u", AntiEntropyInterval: time.Hour}, ru)
	for round := 0; round < 5; round++ {
		b := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: time.Hour}, newRecorder())
		waitFor(t, 10*time.Second, "t healthy", func() bool { return b.Health().Healthy })
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		b2 := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: time.Hour}, newRecorder())
		waitFor(t, 10*time.Second, "the new t healthy", func() bool { return b2.Health().Healthy })
		if err := b2.Close(); err != nil {
			t.Fatal(err)
		}
	}
	unhealthy := false
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if !u.Health().Healthy {
			unhealthy = true
		}
		time.Sleep(5 * time.Millisecond)
	}
	if alls := ru.Alls(); len(alls) != 0 || unhealthy {
		t.Fatalf("namespace u, untouched, got InvalidateAll %v (unhealthy after: %v) while namespace t was closed and started again on the same client", alls, unhealthy)
	}
}
