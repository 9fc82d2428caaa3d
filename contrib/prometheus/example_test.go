package nearcacheprom_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	nearcacheprom "github.com/nearcache/nearcache/contrib/prometheus"
	"github.com/nearcache/nearcache/tiered"
)

// A service registers one Collector, with every cache it holds, on its own
// registry and serves that registry. Here the handler is called directly
// instead of through an HTTP server.
func ExampleNewCollector() {
	mr, _ := miniredis.Run() // a real service passes its own Redis address
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	defer rdb.Close()
	users, err := tiered.New(tiered.Config[string]{Redis: rdb, Namespace: "users"})
	if err != nil {
		panic(err)
	}
	defer users.Close()

	reg := prometheus.NewRegistry()
	if err := reg.Register(nearcacheprom.NewCollector(users)); err != nil {
		panic(err)
	}
	handler := promhttp.HandlerFor(reg, promhttp.HandlerOpts{}) // http.Handle("/metrics", handler)

	ctx := context.Background()
	load := func(ctx context.Context, id string) (string, error) { return "user " + id, nil }
	_, _ = users.GetOrLoad(ctx, "42", load) // L1 miss, Redis miss, loader, written to Redis
	_, _ = users.GetOrLoad(ctx, "42", load) // from L1 (or from Redis, if read before the L1 store applied the fill)

	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for line := range strings.SplitSeq(rec.Body.String(), "\n") {
		for _, name := range []string{"nearcache_loader_calls_total", "nearcache_redis_sets_total", "nearcache_breaker_state"} {
			if strings.HasPrefix(line, name+"{") {
				fmt.Println(line)
			}
		}
	}
	// Output:
	// nearcache_breaker_state{cache="users",state="closed"} 1
	// nearcache_breaker_state{cache="users",state="half-open"} 0
	// nearcache_breaker_state{cache="users",state="open"} 0
	// nearcache_loader_calls_total{cache="users"} 1
	// nearcache_redis_sets_total{cache="users"} 1
}
