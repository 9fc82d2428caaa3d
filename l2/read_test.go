package l2

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
)

// readKeys are keys whose prefixed form ("rt:" + key) is shorter than,
// exactly as long as, and longer than getArgs's buffer.
func readKeys() []string {
	n := len(getArgs{}.buf) - len("rt:")
	return []string{"", "k", strings.Repeat("a", n-1), strings.Repeat("b", n), strings.Repeat("c", n+1), strings.Repeat("d", 300)}
}

// TestReadRoutesByPrefixedKey: Read sends GET of the prefixed key, for keys
// that fit getArgs's buffer and for longer ones, and on a Cluster sends it
// to the master of the prefixed key's slot (no MOVED redirection).
func TestReadRoutesByPrefixedKey(t *testing.T) {
	ctx := context.Background()
	t.Run("standalone", func(t *testing.T) {
		mr := miniredis.RunT(t)
		s := openStore(t, Config{Addrs: []string{mr.Addr()}, KeyPrefix: "rt:"})
		for _, k := range readKeys() {
			mr.Set("rt:"+k, string(encode(nil, &Entry{Value: []byte("v-" + k)}, time.Now())))
			e, err := s.Read(ctx, k)
			if err != nil || string(e.Value) != "v-"+k {
				t.Errorf("Read(%d-byte key): %q %v, want %q", len(k), e.Value, err, "v-"+k)
			}
			if _, err := s.Read(ctx, k+"-absent"); !errors.Is(err, ErrNotFound) {
				t.Errorf("Read of an absent %d-byte key: %v, want ErrNotFound", len(k)+7, err)
			}
		}
	})
	t.Run("cluster", func(t *testing.T) {
		cl := redistest.StartCluster(t)
		var mu sync.Mutex
		gets, moved := 0, 0
		client := redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: cl.Addrs(), ContextTimeoutEnabled: true,
			NewClient: func(opt *redis.Options) *redis.Client {
				c := redis.NewClient(opt)
				c.AddHook(processHook(func(cmd redis.Cmder, err error) {
					if cmd.Name() != "get" {
						return
					}
					mu.Lock()
					defer mu.Unlock()
					gets++
					if err != nil && strings.HasPrefix(err.Error(), "MOVED") {
						moved++
					}
				}))
				return c
			},
		})
		t.Cleanup(func() { _ = client.Close() })
		s, err := New(client, Config{KeyPrefix: "rt:"})
		if err != nil {
			t.Fatal(err)
		}
		keys := readKeys()
		for i := range 50 {
			keys = append(keys, fmt.Sprintf("key-%d", i))
		}
		items := map[string]Entry{}
		for _, k := range keys {
			items[k] = Entry{Value: []byte("v-" + k), TTL: time.Minute}
		}
		if err := s.SetMany(ctx, items); err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if e, err := s.Read(ctx, k); err != nil || string(e.Value) != "v-"+k {
				t.Errorf("Read(%q): %q %v, want %q", k, e.Value, err, "v-"+k)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if moved != 0 || gets != len(keys) {
			t.Errorf("%d Reads sent %d GETs, %d of them answered MOVED; want %d GETs sent to the key's master", len(keys), gets, moved, len(keys))
		}
	})
}

// processHook is a go-redis hook that reports each command with its error.
type processHook func(cmd redis.Cmder, err error)

func (h processHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (h processHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h(cmd, err)
		return err
	}
}

func (h processHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
