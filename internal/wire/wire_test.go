package wire_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/nearcache/nearcache/internal/hashslot"
	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/internal/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestNames pins every name of the contract: a change here breaks instances
// of an older build that share the Redis, so it must be deliberate.
func TestNames(t *testing.T) {
	id := [16]byte{0x01, 0x02, 0xfe}
	for _, c := range []struct{ got, want string }{
		{wire.KeyPrefix("ns"), "ns:"},
		{wire.Channel("ns"), "ns:inv"},
		{wire.RouteChannel("ns", id), "ns:inv:route:0102fe00000000000000000000000000"},
		{wire.RouteChannels("ns"), "ns:inv:route:*"},
		{wire.SeqKey("ns", 0), "{" + hashslot.Tag(0) + "}ns:inv:seq"},
		{wire.EpochKey("ns", 0), "{" + hashslot.Tag(0) + "}ns:inv:epoch"},
		{wire.SeqKey("ns", -1), wire.SeqKey("ns", hashslot.Count-1)},
		{wire.SeqKey("ns", hashslot.Count), wire.SeqKey("ns", 0)},
		{wire.ClaimKey("ns:", "k"), "{" + hashslot.Tag(hashslot.Slot("ns:k")) + "}ns:claim:k"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	for p := 0; p < hashslot.Count; p++ {
		for _, k := range []string{wire.SeqKey("a{b}c", p), wire.EpochKey("a{b}c", p)} {
			if got := hashslot.Slot(k); got != p {
				t.Fatalf("Slot(%q) = %d, want %d", k, got, p)
			}
			if strings.HasPrefix(k, wire.KeyPrefix("a{b}c")) {
				t.Fatalf("%q is under the data prefix: a SCAN of the namespace would see it", k)
			}
		}
	}
}

// TestClaimKeySlot checks that a claim lives in its data key's slot (also
// for a key with a hash tag of its own) and outside the data prefix.
func TestClaimKeySlot(t *testing.T) {
	for _, key := range []string{"", "k", "user:42", "{tag}x", "a{b}c{d}", "{}", strings.Repeat("x", 300)} {
		data := wire.KeyPrefix("ns") + key
		ck := wire.ClaimKey(wire.KeyPrefix("ns"), key)
		if got, want := hashslot.Slot(ck), hashslot.Slot(data); got != want {
			t.Errorf("claim %q in slot %d, its data key %q in %d", ck, got, data, want)
		}
		if strings.HasPrefix(ck, wire.KeyPrefix("ns")) {
			t.Errorf("claim %q is under the data prefix", ck)
		}
	}
}

func TestParseSeq(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"1", 1, true},
		{"42", 42, true},
		{"18446744073709551615", 1<<64 - 1, true},
		{"18446744073709551616", 0, false},  // overflows uint64
		{"100000000000000000000", 0, false}, // 21 digits
		{"", 0, false},
		{"0", 0, false},
		{"01", 0, false},
		{"+1", 0, false},
		{"-1", 0, false},
		{"1e14", 0, false},
		{"1 ", 0, false},
	} {
		got, ok := wire.ParseSeq(c.in)
		if got != c.want || ok != c.ok {
			t.Errorf("ParseSeq(%q) = %d, %v; want %d, %v", c.in, got, ok, c.want, c.ok)
		}
	}
	for _, seq := range []uint64{1, 9, 10, 1e14, 1<<64 - 1} {
		p := wire.AppendSeq([]byte("body"), seq)
		if got, ok := wire.ParseSeq(string(p[len("body"):])); !ok || got != seq {
			t.Errorf("ParseSeq(AppendSeq(%d)) = %d, %v", seq, got, ok)
		}
	}
}

// TestScripts runs the frame on miniredis and on a real redis-server: the
// payload is the body followed by the new sequence in decimal, the write and
// its notification happen together or not at all.
func TestScripts(t *testing.T) {
	servers := map[string]func(t *testing.T) redis.UniversalClient{
		"miniredis": func(t *testing.T) redis.UniversalClient {
			mr := miniredis.RunT(t)
			c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
			t.Cleanup(func() { _ = c.Close() })
			return c
		},
		"redis-server": func(t *testing.T) redis.UniversalClient {
			return redistest.StartServer(t).Client()
		},
	}
	for name, start := range servers {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c := start(t)
			ps := c.Subscribe(ctx, wire.Channel("ns"))
			defer ps.Close()
			if _, err := ps.Receive(ctx); err != nil {
				t.Fatal(err)
			}
			next := func() string {
				t.Helper()
				m, err := ps.ReceiveMessage(ctx)
				if err != nil {
					t.Fatal(err)
				}
				return m.Payload
			}
			n := wire.Notification{Channel: wire.Channel("ns"), SeqKey: wire.SeqKey("ns", 7), Body: []byte("body|")}

			if err := wire.Publish(ctx, c, n); err != nil {
				t.Fatal(err)
			}
			if got := next(); got != "body|1" {
				t.Fatalf("first payload %q, want %q", got, "body|1")
			}

			// A framed write: it sets its key and publishes; returning early publishes nothing.
			write := wire.NewScript(`
if ARGV[3] == 'skip' then return res end
redis.call('SET', KEYS[1], ARGV[3])
res = 1
`)
			keys, argv := wire.Args([]string{"ns:k"}, &n, "skip")
			if err := write.Run(ctx, c, keys, argv...).Err(); err != nil {
				t.Fatal(err)
			}
			keys, argv = wire.Args([]string{"ns:k"}, &n, "v")
			if got, err := write.Run(ctx, c, keys, argv...).Int(); err != nil || got != 1 {
				t.Fatalf("framed write = %d, %v; want its own reply 1", got, err)
			}
			if got := next(); got != "body|2" {
				t.Fatalf("payload after the skipped and the written write %q, want %q (a skipped write must not publish)", got, "body|2")
			}
			if v := c.Get(ctx, "ns:k").Val(); v != "v" {
				t.Fatalf("data key %q, want %q", v, "v")
			}
			// Without a notification: the write alone, no sequence.
			keys, argv = wire.Args([]string{"ns:k"}, nil, "quiet")
			if err := write.Run(ctx, c, keys, argv...).Err(); err != nil {
				t.Fatal(err)
			}
			if v := c.Get(ctx, n.SeqKey).Val(); v != "2" {
				t.Fatalf("sequence after a write without notification %q, want 2", v)
			}

			// Integer notation past 1e14, where Lua's tostring switches to exponents.
			if err := c.Set(ctx, n.SeqKey, "99999999999999", 0).Err(); err != nil {
				t.Fatal(err)
			}
			if err := wire.Publish(ctx, c, n); err != nil {
				t.Fatal(err)
			}
			if got := next(); got != "body|100000000000000" {
				t.Fatalf("payload %q, want %q", got, "body|100000000000000")
			}

			// A corrupt sequence key refuses the write before anything is written.
			if err := c.Set(ctx, n.SeqKey, "x", 0).Err(); err != nil {
				t.Fatal(err)
			}
			keys, argv = wire.Args([]string{"ns:k"}, &n, "w")
			err := write.Run(ctx, c, keys, argv...).Err()
			if err == nil || !strings.Contains(err.Error(), "sequence key holds a non-integer: "+n.SeqKey) {
				t.Fatalf("write over a corrupt sequence key: %v, want the key named", err)
			}
			if v := c.Get(ctx, "ns:k").Val(); v != "quiet" {
				t.Fatalf("data key %q after a refused write, want %q", v, "quiet")
			}
			if err := c.Set(ctx, n.SeqKey, "5", 0).Err(); err != nil {
				t.Fatal(err)
			}
			if err := wire.Publish(ctx, c, n); err != nil {
				t.Fatal(err)
			}
			if got := next(); got != "body|6" {
				t.Fatalf("next payload %q, want %q (the refused write published)", got, "body|6")
			}
		})
	}
}

// TestShardChannel pins the shard channel's name and checks that it lives
// in its partition's slot and that SplitChannel takes it apart.
func TestShardChannel(t *testing.T) {
	if got, want := wire.ShardChannel("ns", 0), "{"+hashslot.Tag(0)+"}ns:inv"; got != want {
		t.Fatalf("ShardChannel(ns, 0) = %q, want %q", got, want)
	}
	if wire.ShardChannel("ns", hashslot.Count+3) != wire.ShardChannel("ns", 3) {
		t.Fatal("ShardChannel does not reduce the partition modulo 16384")
	}
	for p := 0; p < hashslot.Count; p++ {
		ch := wire.ShardChannel("a", p)
		if got := hashslot.Slot(ch); got != p {
			t.Fatalf("Slot(%q) = %d, want %d", ch, got, p)
		}
		base, slot, shard := wire.SplitChannel(ch)
		if base != "a:inv" || slot != p || !shard {
			t.Fatalf("SplitChannel(%q) = %q, %d, %v; want a:inv, %d, true", ch, base, slot, shard, p)
		}
	}
	for _, ch := range []string{"ns:inv", "", "{", "{}ns:inv", "x{1}y"} {
		if base, slot, shard := wire.SplitChannel(ch); base != ch || slot != 0 || shard {
			t.Errorf("SplitChannel(%q) = %q, %d, %v; want it back unchanged, not a shard channel", ch, base, slot, shard)
		}
	}
}

// TestShardScript: a notification on a shard channel is published with
// SPUBLISH; where Redis refuses SPUBLISH (miniredis has none; an ACL user
// without the shard channel) the frame publishes it with PUBLISH on the
// plain channel instead, so the write is still heard and still
// acknowledged.
func TestShardScript(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n := wire.Notification{Channel: wire.ShardChannel("ns", 7), SeqKey: wire.SeqKey("ns", 7), Body: []byte("body|")}
	write := wire.NewScript(`
redis.call('SET', KEYS[1], ARGV[3])
res = 1
`)
	receive := func(t *testing.T, ps *redis.PubSub) *redis.Message {
		t.Helper()
		for {
			v, err := ps.Receive(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if m, ok := v.(*redis.Message); ok {
				return m
			}
		}
	}
	run := func(t *testing.T, c redis.UniversalClient, val string) {
		t.Helper()
		keys, argv := wire.Args([]string{"ns:k"}, &n, val)
		if got, err := write.Run(ctx, c, keys, argv...).Int(); err != nil || got != 1 {
			t.Fatalf("framed write = %d, %v; want 1, nil", got, err)
		}
		if v := c.Get(ctx, "ns:k").Val(); v != val {
			t.Fatalf("data key %q, want %q", v, val)
		}
	}

	t.Run("redis-server", func(t *testing.T) {
		srv := redistest.StartServer(t)
		c := srv.Client()
		ps := c.SSubscribe(ctx, n.Channel)
		defer ps.Close()
		if _, err := ps.Receive(ctx); err != nil {
			t.Fatal(err)
		}
		run(t, c, "v1")
		if m := receive(t, ps); m.Channel != n.Channel || m.Payload != "body|1" {
			t.Fatalf("shard subscriber got %q on %q, want body|1 on %q", m.Payload, m.Channel, n.Channel)
		}

		// A user allowed the plain channel only: SPUBLISH is refused, the
		// frame falls back to PUBLISH.
		if err := c.Do(ctx, "ACL", "SETUSER", "plain", "on", ">pw", "~*", "+@all", "resetchannels", "&ns:inv").Err(); err != nil {
			t.Fatal(err)
		}
		pc := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "plain", Password: "pw"})
		defer pc.Close()
		plain := c.Subscribe(ctx, wire.Channel("ns"))
		defer plain.Close()
		if _, err := plain.Receive(ctx); err != nil {
			t.Fatal(err)
		}
		run(t, pc, "v2")
		if m := receive(t, plain); m.Channel != "ns:inv" || m.Payload != "body|2" {
			t.Fatalf("plain subscriber got %q on %q, want body|2 on ns:inv", m.Payload, m.Channel)
		}
	})
	t.Run("miniredis", func(t *testing.T) {
		mr := miniredis.RunT(t)
		c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		defer c.Close()
		plain := c.Subscribe(ctx, wire.Channel("ns"))
		defer plain.Close()
		if _, err := plain.Receive(ctx); err != nil {
			t.Fatal(err)
		}
		run(t, c, "v1")
		if m := receive(t, plain); m.Channel != "ns:inv" || m.Payload != "body|1" {
			t.Fatalf("plain subscriber got %q on %q, want body|1 on ns:inv", m.Payload, m.Channel)
		}
	})
}

// TestShardScriptNoShardSubscriber: SPUBLISH that reaches no subscriber on
// the node (the importing node of a slot being migrated, where no one can
// SSUBSCRIBE it yet) falls back to PUBLISH on the plain channel; one that
// reaches a shard subscriber publishes nothing plain.
func TestShardScriptNoShardSubscriber(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv := redistest.StartServer(t)
	c := srv.Client()
	n := wire.Notification{Channel: wire.ShardChannel("ns", 9), SeqKey: wire.SeqKey("ns", 9), Body: []byte("b|")}
	plain := c.Subscribe(ctx, wire.Channel("ns"))
	defer plain.Close()
	if _, err := plain.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	if err := wire.Publish(ctx, c, n); err != nil {
		t.Fatal(err)
	}
	m, err := plain.ReceiveTimeout(ctx, 5*time.Second)
	if err != nil {
		t.Fatalf("no shard subscriber: the plain subscriber got nothing (%v), want b|1", err)
	}
	if msg, ok := m.(*redis.Message); !ok || msg.Payload != "b|1" {
		t.Fatalf("no shard subscriber: plain subscriber got %#v, want b|1", m)
	}

	sh := c.SSubscribe(ctx, n.Channel)
	defer sh.Close()
	if _, err := sh.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	if err := wire.Publish(ctx, c, n); err != nil {
		t.Fatal(err)
	}
	if m, err := sh.ReceiveTimeout(ctx, 5*time.Second); err != nil {
		t.Fatalf("shard subscriber: %v", err)
	} else if msg, ok := m.(*redis.Message); !ok || msg.Payload != "b|2" {
		t.Fatalf("shard subscriber got %#v, want b|2", m)
	}
	if m, err := plain.ReceiveTimeout(ctx, 200*time.Millisecond); err == nil {
		t.Fatalf("a shard subscriber heard it, yet the plain subscriber got %#v too", m)
	}
}
