package l2

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/internal/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// backend is one Redis the contract suite runs against.
type backend struct {
	name string
	// open returns a raw client for the server (for foreign writes and
	// subscriptions) and a Store with the given prefix on a fresh client.
	open func(t *testing.T, cfg Config) (*Store, redis.UniversalClient)
}

func backends() []backend {
	return []backend{
		{"miniredis", func(t *testing.T, cfg Config) (*Store, redis.UniversalClient) {
			mr := miniredis.RunT(t)
			cfg.Addrs = []string{mr.Addr()}
			return openStore(t, cfg), rawClient(t, []string{mr.Addr()}, false)
		}},
		{"redis-server", func(t *testing.T, cfg Config) (*Store, redis.UniversalClient) {
			srv := redistest.StartServer(t)
			cfg.Addrs = []string{srv.Addr()}
			return openStore(t, cfg), rawClient(t, []string{srv.Addr()}, false)
		}},
	}
}

func openStore(t testing.TB, cfg Config) *Store {
	t.Helper()
	s, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func rawClient(t testing.TB, addrs []string, cluster bool) redis.UniversalClient {
	var c redis.UniversalClient
	if cluster {
		c = redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	} else {
		c = redis.NewClient(&redis.Options{Addr: addrs[0]})
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// testNotify builds notifications the way the invalidation package does in
// shape: one sequence key per partition, hash-tagged into its slot.
func testNotify(channel string) NotifyFunc {
	return func(p int, keys []string) Notification {
		return Notification{
			Channel: channel,
			SeqKey:  seqKey(p),
			Body:    []byte(strconv.Itoa(p) + "|" + strings.Join(keys, ",") + "|"),
		}
	}
}

func seqKey(p int) string { return wire.SeqKey("test", p) }

// subscribe returns a function that waits for the next message on channel.
func subscribe(t *testing.T, c redis.UniversalClient, channel string) func() (string, bool) {
	t.Helper()
	ctx := context.Background()
	ps := c.Subscribe(ctx, channel)
	t.Cleanup(func() { _ = ps.Close() })
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	return func() (string, bool) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		m, err := ps.ReceiveMessage(ctx)
		if err != nil {
			return "", false
		}
		return m.Payload, true
	}
}

// noMessage asserts nothing arrives on the subscription within a short wait.
func noMessage(t *testing.T, c redis.UniversalClient, channel string, publish func()) {
	t.Helper()
	ctx := context.Background()
	ps := c.Subscribe(ctx, channel)
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	publish()
	// A PING after the operation: its reply arrives after any message the
	// operation published, so seeing the pong proves nothing was published.
	if err := ps.Ping(ctx, "fence"); err != nil {
		t.Fatalf("ping: %v", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	msg, err := ps.Receive(rctx)
	if err != nil {
		t.Fatalf("receive fence: %v", err)
	}
	if _, ok := msg.(*redis.Pong); !ok {
		t.Fatalf("got %#v before the fence, want no message", msg)
	}
}

func TestContract(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			for _, tc := range contractCases {
				t.Run(tc.name, func(t *testing.T) {
					s, raw := b.open(t, Config{KeyPrefix: "app:"})
					tc.fn(t, s, raw)
				})
			}
		})
	}
}

var contractCases = []struct {
	name string
	fn   func(t *testing.T, s *Store, raw redis.UniversalClient)
}{
	{"GetMissIsErrNotFound", func(t *testing.T, s *Store, _ redis.UniversalClient) {
		_, err := s.Get(context.Background(), "nope")
		if !errors.Is(err, ErrNotFound) || errors.Is(err, redis.Nil) {
			t.Fatalf("got %v, want ErrNotFound and not redis.Nil", err)
		}
		if st := s.Stats(); st.Misses != 1 {
			t.Fatalf("misses: got %d, want 1", st.Misses)
		}
	}},
	{"SetGetRoundTrip", func(t *testing.T, s *Store, raw redis.UniversalClient) {
		ctx := context.Background()
		before := time.Now()
		in := Entry{Value: []byte("hello"), Metadata: map[string]string{"etag": "v1", "": "empty"},
			TTL: 300 * time.Second, FreshFor: 60 * time.Second}
		if err := s.Set(ctx, "k", in); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		if string(got.Value) != "hello" || !cmp.Equal(got.Metadata, in.Metadata) || got.Negative {
			t.Fatalf("got %+v, want value hello and metadata %v", got, in.Metadata)
		}
		if d := got.ExpiresAt.Sub(before); d < 299*time.Second || d > 301*time.Second {
			t.Fatalf("ExpiresAt %v after write, want ~300s", d)
		}
		if d := got.StaleAt.Sub(before); d < 59*time.Second || d > 61*time.Second {
			t.Fatalf("StaleAt %v after write, want ~60s", d)
		}
		pttl, err := raw.PTTL(ctx, "app:k").Result()
		if err != nil || pttl < 299*time.Second || pttl > 300*time.Second {
			t.Fatalf("PTTL: got %v (%v), want ~300s", pttl, err)
		}
		if err := s.Set(ctx, "neg", Entry{Negative: true, TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
		if got, err := s.Get(ctx, "neg"); err != nil || !got.Negative || len(got.Value) != 0 {
			t.Fatalf("negative entry: got %+v, %v", got, err)
		}
		if err := s.Set(ctx, "forever", Entry{Value: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		if pttl, _ := raw.PTTL(ctx, "app:forever").Result(); pttl >= 0 {
			t.Fatalf("TTL 0 must not expire: PTTL %v", pttl)
		}
	}},
	{"ExistsDelete", func(t *testing.T, s *Store, _ redis.UniversalClient) {
		ctx := context.Background()
		if ok, err := s.Exists(ctx, "k"); ok || err != nil {
			t.Fatalf("Exists before set: %v %v", ok, err)
		}
		_ = s.Set(ctx, "k", Entry{Value: []byte("v")})
		if ok, err := s.Exists(ctx, "k"); !ok || err != nil {
			t.Fatalf("Exists after set: %v %v", ok, err)
		}
		if ok, err := s.Delete(ctx, "k"); !ok || err != nil {
			t.Fatalf("Delete existing: got %v %v, want true", ok, err)
		}
		if ok, err := s.Delete(ctx, "k"); ok || err != nil {
			t.Fatalf("Delete missing: got %v %v, want false", ok, err)
		}
	}},
	{"ManyOps", func(t *testing.T, s *Store, _ redis.UniversalClient) {
		ctx := context.Background()
		items := map[string]Entry{}
		for i := 0; i < 20; i++ {
			items[fmt.Sprintf("k%d", i)] = Entry{Value: []byte(fmt.Sprint(i)), TTL: time.Minute}
		}
		if err := s.SetMany(ctx, items); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetMany(ctx, []string{"k1", "k5", "missing", "k19"})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"k1": "1", "k5": "5", "k19": "19"}
		gotVals := map[string]string{}
		for k, e := range got {
			gotVals[k] = string(e.Value)
		}
		if d := cmp.Diff(want, gotVals); d != "" {
			t.Fatalf("GetMany (-want +got):\n%s", d)
		}
		n, err := s.DeleteMany(ctx, []string{"k1", "k2", "missing"})
		if err != nil || n != 2 {
			t.Fatalf("DeleteMany: got %d %v, want 2", n, err)
		}
	}},
	{"KeysStayUnderPrefix", func(t *testing.T, s *Store, raw redis.UniversalClient) {
		ctx := context.Background()
		_ = s.SetMany(ctx, map[string]Entry{"user:1": {Value: []byte("a")}, "user:2": {Value: []byte("b")}, "order:1": {Value: []byte("c")}})
		raw.Set(ctx, "other:user:3", "x", 0)
		raw.Set(ctx, "appX:user:4", "x", 0)
		got, err := s.Keys(ctx, "user:*")
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		if d := cmp.Diff([]string{"user:1", "user:2"}, got); d != "" {
			t.Fatalf("Keys (-want +got):\n%s", d)
		}
		all, _ := s.Keys(ctx, "")
		if len(all) != 3 {
			t.Fatalf("Keys(\"\"): got %v, want 3 keys", all)
		}
	}},
	{"ClearOnlyPrefix", func(t *testing.T, s *Store, raw redis.UniversalClient) {
		ctx := context.Background()
		items := map[string]Entry{}
		for i := 0; i < 2500; i++ { // more than one SCAN batch
			items[fmt.Sprint(i)] = Entry{Value: []byte("v")}
		}
		if err := s.SetMany(ctx, items); err != nil {
			t.Fatal(err)
		}
		raw.Set(ctx, "foreign", "keep", 0)
		raw.Set(ctx, "ap:x", "keep", 0)
		n, err := s.Clear(ctx)
		if err != nil || n != 2500 {
			t.Fatalf("Clear: got %d %v, want 2500", n, err)
		}
		if v, _ := raw.Get(ctx, "foreign").Result(); v != "keep" {
			t.Fatalf("Clear removed a foreign key")
		}
		if left, _ := s.Keys(ctx, ""); len(left) != 0 {
			t.Fatalf("keys left after Clear: %d", len(left))
		}
	}},
	{"NotifyWritesSequenceAndPublishTogether", func(t *testing.T, s *Store, raw redis.UniversalClient) {
		ctx := context.Background()
		next := subscribe(t, raw, "inv")
		nf := Notify(testNotify("inv"))
		if err := s.Set(ctx, "a", Entry{Value: []byte("1"), TTL: time.Minute}, nf); err != nil {
			t.Fatal(err)
		}
		if m, ok := next(); !ok || m != "0|a|1" {
			t.Fatalf("first message: got %q %v, want \"0|a|1\"", m, ok)
		}
		if err := s.SetMany(ctx, map[string]Entry{"b": {Value: []byte("2")}, "c": {Value: []byte("3")}}, nf); err != nil {
			t.Fatal(err)
		}
		m, _ := next()
		if m != "0|b,c|2" && m != "0|c,b|2" {
			t.Fatalf("SetMany message: got %q, want 0|b,c|2", m)
		}
		if ok, err := s.Delete(ctx, "a", nf); !ok || err != nil {
			t.Fatalf("Delete: %v %v", ok, err)
		}
		if m, _ := next(); m != "0|a|3" {
			t.Fatalf("Delete message: got %q", m)
		}
		if n, err := s.DeleteMany(ctx, []string{"b", "zz"}, nf); n != 1 || err != nil {
			t.Fatalf("DeleteMany: %d %v", n, err)
		}
		if m, _ := next(); m != "0|b,zz|4" {
			t.Fatalf("DeleteMany message: got %q", m)
		}
		if _, err := s.Clear(ctx, nf); err != nil {
			t.Fatal(err)
		}
		if m, _ := next(); m != "0||5" {
			t.Fatalf("Clear message: got %q", m)
		}
		if v, _ := raw.Get(ctx, seqKey(0)).Result(); v != "5" {
			t.Fatalf("sequence key: got %q, want 5", v)
		}
		if _, err := s.Get(ctx, "c"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("c after Clear: %v", err)
		}
	}},
	{"NotifyAllOrNothing", func(t *testing.T, s *Store, raw redis.UniversalClient) {
		ctx := context.Background()
		raw.Set(ctx, seqKey(0), "not-a-number", 0)
		noMessage(t, raw, "inv", func() {
			err := s.Set(ctx, "a", Entry{Value: []byte("1")}, Notify(testNotify("inv")))
			if !errors.Is(err, ErrOperation) || !strings.Contains(err.Error(), "sequence key") {
				t.Errorf("Set with a broken sequence key: got %v, want ErrOperation naming the sequence key", err)
			}
		})
		if ok, _ := s.Exists(ctx, "a"); ok {
			t.Fatalf("data key written although the notification failed")
		}
		if v, _ := raw.Get(ctx, seqKey(0)).Result(); v != "not-a-number" {
			t.Fatalf("sequence key changed to %q", v)
		}
	}},
	{"CorruptBytesFromForeignClient", func(t *testing.T, s *Store, raw redis.UniversalClient) {
		ctx := context.Background()
		raw.Set(ctx, "app:bad", "{\"json\":\"not an envelope\"}", 0)
		raw.Set(ctx, "app:trunc", string([]byte{envMagic, envVersion, flagSoft | flagHard, 1, 2}), 0)
		_ = s.Set(ctx, "good", Entry{Value: []byte("ok")})
		for _, k := range []string{"bad", "trunc"} {
			_, err := s.Get(ctx, k)
			var le *Error
			if !errors.Is(err, ErrCorrupt) || !errors.Is(err, ErrOperation) || !errors.As(err, &le) || le.Key != k {
				t.Fatalf("Get(%s): got %v, want *Error{Key:%s} wrapping ErrCorrupt", k, err, k)
			}
		}
		got, err := s.GetMany(ctx, []string{"bad", "good", "trunc"})
		if !errors.Is(err, ErrCorrupt) || len(got) != 1 || string(got["good"].Value) != "ok" {
			t.Fatalf("GetMany: got %v, %v; want good only and ErrCorrupt", got, err)
		}
		if st := s.Stats(); st.Corrupt != 4 {
			t.Fatalf("corrupt counter: got %d, want 4", st.Corrupt)
		}
	}},
	{"ReadManyIndexedLikeKeys", func(t *testing.T, s *Store, raw redis.UniversalClient) {
		ctx := context.Background()
		_ = s.Set(ctx, "v", Entry{Value: []byte("ok")})
		_ = s.Set(ctx, "gone", Entry{Value: []byte("old")})
		if _, err := s.Delete(ctx, "gone", Tombstone(time.Minute)); err != nil {
			t.Fatal(err)
		}
		raw.Set(ctx, "app:bad", "not an envelope", 0)
		raw.Set(ctx, "app:empty", "", 0)
		keys := []string{"missing", "v", "gone", "bad", "empty", "v"}
		got, err := s.ReadMany(ctx, keys)
		if !errors.Is(err, ErrCorrupt) || len(got) != len(keys) {
			t.Fatalf("ReadMany: %d entries, %v; want %d and ErrCorrupt", len(got), err, len(keys))
		}
		type view struct {
			Value               string
			Present, Tomb, Corr bool
		}
		var views []view
		for _, e := range got {
			v := view{Present: e.Raw != nil, Tomb: e.Tombstone, Corr: e.Corrupt}
			if !e.Tombstone { // a tombstone's payload is the store's own
				v.Value = string(e.Value)
			}
			views = append(views, v)
		}
		want := []view{
			{},                           // missing: the zero Entry
			{Value: "ok", Present: true}, // v
			{Present: true, Tomb: true},  // gone
			{Present: true, Corr: true},  // bad
			{Present: true, Corr: true},  // empty
			{Value: "ok", Present: true}, // v again
		}
		if d := cmp.Diff(want, views); d != "" {
			t.Fatalf("ReadMany (-want +got):\n%s", d)
		}
	}},
	{"AppendReadManyExtendsDst", func(t *testing.T, s *Store, raw redis.UniversalClient) {
		ctx := context.Background()
		_ = s.Set(ctx, "a", Entry{Value: []byte("A")})
		_ = s.Set(ctx, "b", Entry{Value: []byte("B")})
		raw.Set(ctx, "app:bad", "not an envelope", 0)
		// dst's own entries stay as they are; one entry per key follows,
		// indexed like keys, also when dst has room to spare.
		dst := make([]Entry, 1, 8)
		dst[0] = Entry{Value: []byte("mine")}
		got, err := s.AppendReadMany(ctx, dst, []string{"b", "missing", "bad", "a"})
		if !errors.Is(err, ErrCorrupt) || len(got) != 5 {
			t.Fatalf("AppendReadMany: %d entries, %v; want 5 and ErrCorrupt", len(got), err)
		}
		if &got[0] != &dst[0] {
			t.Fatalf("AppendReadMany reallocated a dst with room for the batch")
		}
		views := make([]string, len(got))
		for i, e := range got {
			views[i] = fmt.Sprintf("%s/%v/%v", e.Value, e.Raw != nil, e.Corrupt)
		}
		want := []string{"mine/false/false", "B/true/false", "/false/false", "/true/true", "A/true/false"}
		if d := cmp.Diff(want, views); d != "" {
			t.Fatalf("AppendReadMany (-want +got):\n%s", d)
		}
		// Reusing the slice overwrites what an earlier batch left there.
		got, err = s.AppendReadMany(ctx, got[:1], []string{"missing", "a"})
		if err != nil || len(got) != 3 || got[1].Raw != nil || string(got[2].Value) != "A" {
			t.Fatalf("AppendReadMany over a reused slice: %d entries (%+v), %v; want mine, absent, A", len(got), got, err)
		}
		// Failures leave dst as it was.
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		got, err = s.AppendReadMany(ctx, dst[:1], []string{"a"})
		if !errors.Is(err, ErrClosed) || len(got) != 1 || string(got[0].Value) != "mine" {
			t.Fatalf("AppendReadMany after Close: %d entries, %v; want dst unchanged and ErrClosed", len(got), err)
		}
	}},
	{"OversizedValues", func(t *testing.T, s *Store, raw redis.UniversalClient) {
		ctx := context.Background()
		big := make([]byte, s.cfg.MaxValueSize)
		err := s.Set(ctx, "big", Entry{Value: big})
		if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), `"big"`) || !strings.Contains(err.Error(), strconv.Itoa(s.cfg.MaxValueSize)) {
			t.Fatalf("Set oversized: got %v, want ErrTooLarge naming key and limit", err)
		}
		if ok, _ := s.Exists(ctx, "big"); ok {
			t.Fatalf("oversized value was written")
		}
		// CheckSize refuses what Set refuses, counted the same way, and
		// lets the rest through; SetMany with one oversized entry writes
		// none of them.
		large := s.Stats().TooLarge
		if err := s.CheckSize("big", Entry{Value: big}); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), `"big"`) {
			t.Fatalf("CheckSize oversized: got %v, want ErrTooLarge naming the key", err)
		}
		if err := s.CheckSize("small", Entry{Value: big[:16]}); err != nil {
			t.Fatalf("CheckSize small: %v", err)
		}
		if d := s.Stats().TooLarge - large; d != 1 {
			t.Fatalf("TooLarge moved by %d after one refusal, want 1", d)
		}
		err = s.SetMany(ctx, map[string]Entry{"small": {Value: big[:16]}, "big": {Value: big}})
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("SetMany with one oversized entry: got %v, want ErrTooLarge", err)
		}
		if ok, _ := s.Exists(ctx, "small"); ok {
			t.Fatalf("SetMany wrote part of a batch it refused")
		}
		raw.Set(ctx, "app:foreign-big", append([]byte{envMagic, envVersion, 0}, big...), 0)
		if _, err := s.Get(ctx, "foreign-big"); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("Get oversized: got %v, want ErrTooLarge", err)
		}
	}},
	{"ClosedStore", func(t *testing.T, s *Store, _ redis.UniversalClient) {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if _, err := s.Get(context.Background(), "k"); !errors.Is(err, ErrClosed) {
			t.Fatalf("Get after Close: got %v, want ErrClosed", err)
		}
	}},
}

func TestClearRefusesEmptyPrefix(t *testing.T) {
	mr := miniredis.RunT(t)
	s := openStore(t, Config{Addrs: []string{mr.Addr()}})
	mr.Set("precious", "x")
	if _, err := s.Clear(context.Background()); !errors.Is(err, ErrOperation) {
		t.Fatalf("Clear with empty prefix: got %v, want ErrOperation", err)
	}
	if !mr.Exists("precious") {
		t.Fatalf("Clear with empty prefix removed a key")
	}
}

func TestKeysPrefixWithGlobCharacters(t *testing.T) {
	mr := miniredis.RunT(t)
	s := openStore(t, Config{Addrs: []string{mr.Addr()}, KeyPrefix: "app[1]*:"})
	ctx := context.Background()
	_ = s.Set(ctx, "k", Entry{Value: []byte("v")})
	mr.Set("app1x:k", "x") // matches the unescaped glob app[1]*:*
	mr.Set("app[1]*:", "") // the prefix itself
	got, err := s.Keys(ctx, "*")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if d := cmp.Diff([]string{"", "k"}, got); d != "" {
		t.Fatalf("Keys (-want +got):\n%s", d)
	}
	if n, err := s.Clear(ctx); err != nil || n != 2 || !mr.Exists("app1x:k") {
		t.Fatalf("Clear: got %d %v; foreign key kept: %v", n, err, mr.Exists("app1x:k"))
	}
}

func TestServerDown(t *testing.T) {
	port, _ := redistest.FreePort()
	addr := fmt.Sprintf("127.0.0.1:%d", port) // nothing listens here
	start := time.Now()
	_, err := Open(context.Background(), Config{Addrs: []string{addr}, DialTimeout: 200 * time.Millisecond})
	if !errors.Is(err, ErrConnection) {
		t.Fatalf("Open on a closed port: got %v, want ErrConnection", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Open took %v on a closed port", d)
	}

	srv := redistest.StartServer(t)
	s := openStore(t, Config{Addrs: []string{srv.Addr()}, SocketTimeout: 200 * time.Millisecond, DialTimeout: 200 * time.Millisecond})
	ctx := context.Background()
	if err := s.Set(ctx, "k", Entry{Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	srv.Pause() // black hole: connection open, no answers
	_, err = s.Get(ctx, "k")
	srv.Resume()
	if !errors.Is(err, ErrConnection) || !errors.Is(err, ErrTimeout) {
		t.Fatalf("Get on a paused server: got %v, want ErrConnection+ErrTimeout", err)
	}
	srv.Kill()
	_, err = s.Get(ctx, "k")
	if !errors.Is(err, ErrConnection) {
		t.Fatalf("Get on a killed server: got %v, want ErrConnection", err)
	}
	if s.IsConnected(ctx) {
		t.Fatalf("IsConnected on a killed server: true")
	}
	if st := s.Stats(); st.Errors < 2 || st.Timeouts < 1 {
		t.Fatalf("stats after failures: %+v", st)
	}
}

func TestConfigureServer(t *testing.T) {
	srv := redistest.StartServer(t)
	s := openStore(t, Config{Addrs: []string{srv.Addr()}, ApplyServerConfig: true, MaxMemory: "64mb", EvictionPolicy: "allkeys-lru"})
	info, err := s.ServerStats(context.Background())
	if err != nil || len(info) != 1 {
		t.Fatalf("ServerStats: %v %v", info, err)
	}
	if got := info[0]; got.MaxMemory != 64<<20 || got.MaxMemoryPolicy != "allkeys-lru" || got.Version == "" || got.RunID == "" || got.ConnectedClients < 1 {
		t.Fatalf("server info after CONFIG SET: %+v", got)
	}

	// Without the opt-in nothing is changed.
	_ = openStore(t, Config{Addrs: []string{srv.Addr()}, MaxMemory: "1mb"})
	if info, _ := s.ServerStats(context.Background()); info[0].MaxMemory != 64<<20 {
		t.Fatalf("maxmemory changed without ApplyServerConfig: %d", info[0].MaxMemory)
	}

	// A server that refuses CONFIG (as managed Redis does).
	locked := redistest.StartServer(t, redistest.WithArgs("--rename-command", "CONFIG", ""))
	_, err = Open(context.Background(), Config{Addrs: []string{locked.Addr()}, ApplyServerConfig: true, MaxMemory: "64mb"})
	if !errors.Is(err, ErrOperation) || !strings.Contains(err.Error(), "maxmemory") {
		t.Fatalf("CONFIG SET refused: got %v, want ErrOperation naming maxmemory", err)
	}
}

func TestConfigNeverPrintsPassword(t *testing.T) {
	c := Config{Addrs: []string{"h:1"}, Username: "app", Password: "s3cret-pw", KeyPrefix: "p:"}
	for _, f := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
		out := fmt.Sprintf(f, c)
		if strings.Contains(out, "s3cret") || !strings.Contains(out, "app") {
			t.Errorf("%s: %s", f, out)
		}
	}
	out := fmt.Sprint(&c) + c.String() + c.GoString()
	if strings.Contains(out, "s3cret") {
		t.Errorf("pointer or method form leaked the password: %s", out)
	}
	js, err := c.MarshalJSON()
	if err != nil || strings.Contains(string(js), "s3cret") || !strings.Contains(string(js), "REDACTED") {
		t.Errorf("JSON: %s %v", js, err)
	}
	if c.Password != "s3cret-pw" {
		t.Errorf("redaction changed the caller's Config")
	}
}

func TestNewNeverClosesCallersClient(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer c.Close()
	s, err := New(c, Config{})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	if err := c.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("caller's client unusable after Store.Close: %v", err)
	}
	if _, err := New(nil, Config{}); err == nil {
		t.Fatalf("New(nil): want an error")
	}
}

func TestSetIfAndTombstones(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			s, raw := b.open(t, Config{KeyPrefix: "app:"})
			ctx := context.Background()
			next := subscribe(t, raw, "inv")
			nf := Notify(testNotify("inv"))

			// Absent: the first SetIf(nil) writes and notifies, the second does not.
			if ok, err := s.SetIf(ctx, "k", Entry{Value: []byte("v1")}, nil, nf); !ok || err != nil {
				t.Fatalf("SetIf on absent key: %v %v, want written", ok, err)
			}
			if m, _ := next(); m != "0|k|1" {
				t.Fatalf("notification: got %q", m)
			}
			noMessage(t, raw, "inv", func() {
				if ok, err := s.SetIf(ctx, "k", Entry{Value: []byte("v2")}, nil, nf); ok || err != nil {
					t.Errorf("SetIf(absent) on a present key: %v %v, want not written", ok, err)
				}
			})

			// Replace exactly what was read.
			cur, err := s.Read(ctx, "k")
			if err != nil {
				t.Fatal(err)
			}
			_ = s.Set(ctx, "k", Entry{Value: []byte("v3")}) // a newer write
			if ok, _ := s.SetIf(ctx, "k", Entry{Value: []byte("late")}, cur.Raw); ok {
				t.Fatalf("SetIf overwrote a newer write")
			}
			cur, _ = s.Read(ctx, "k")
			if ok, _ := s.SetIf(ctx, "k", Entry{Value: []byte("v4")}, cur.Raw); !ok {
				t.Fatalf("SetIf with the current bytes: not written")
			}
			if e, _ := s.Get(ctx, "k"); string(e.Value) != "v4" {
				t.Fatalf("after SetIf: %q", e.Value)
			}

			// A tombstone reads as not found but blocks SetIf(absent).
			if ok, err := s.Delete(ctx, "k", nf, Tombstone(time.Minute)); !ok || err != nil {
				t.Fatalf("Delete with tombstone: %v %v", ok, err)
			}
			if m, _ := next(); m != "0|k|2" {
				t.Fatalf("tombstone notification: got %q", m)
			}
			if _, err := s.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get of a tombstone: %v, want ErrNotFound", err)
			}
			if m, _ := s.GetMany(ctx, []string{"k"}); len(m) != 0 {
				t.Fatalf("GetMany of a tombstone: %v", m)
			}
			tomb, err := s.Read(ctx, "k")
			if err != nil || !tomb.Tombstone {
				t.Fatalf("Read of a tombstone: %+v %v", tomb, err)
			}
			if pttl, _ := raw.PTTL(ctx, "app:k").Result(); pttl <= 0 || pttl > time.Minute {
				t.Fatalf("tombstone PTTL %v", pttl)
			}
			if ok, _ := s.SetIf(ctx, "k", Entry{Value: []byte("late")}, nil); ok {
				t.Fatalf("SetIf(absent) overwrote a tombstone")
			}
			// A second delete makes a different tombstone: the first no longer matches.
			_, _ = s.Delete(ctx, "k", Tombstone(time.Minute))
			if ok, _ := s.SetIf(ctx, "k", Entry{Value: []byte("late")}, tomb.Raw); ok {
				t.Fatalf("SetIf matched an older tombstone")
			}
			tomb2, _ := s.Read(ctx, "k")
			if ok, _ := s.SetIf(ctx, "k", Entry{Value: []byte("fresh")}, tomb2.Raw); !ok {
				t.Fatalf("SetIf over the tombstone it read: not written")
			}

			// Corrupt bytes can be replaced through Read's Raw.
			raw.Set(ctx, "app:bad", "garbage", 0)
			bad, err := s.Read(ctx, "bad")
			if !errors.Is(err, ErrCorrupt) || !bad.Corrupt || string(bad.Raw) != "garbage" {
				t.Fatalf("Read corrupt: %+v %v", bad, err)
			}
			if ok, _ := s.SetIf(ctx, "bad", Entry{Value: []byte("repaired")}, bad.Raw); !ok {
				t.Fatalf("SetIf over corrupt bytes: not written")
			}
			m, err := s.SetManyIf(ctx, map[string]Entry{"bad": {Value: []byte("x")}, "new": {Value: []byte("y")}}, nil)
			if err != nil || m["bad"] || !m["new"] {
				t.Fatalf("SetManyIf: %v %v, want only new written", m, err)
			}
		})
	}
}
