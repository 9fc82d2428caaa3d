package main

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/tiered"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testEnv is a service on an embedded miniredis, served by an httptest
// server; everything is stopped when the test ends.
type testEnv struct {
	mr  *miniredis.Miniredis
	rc  *redis.Client // a plain client of the same Redis, also the service's
	svc *service
	srv *httptest.Server
}

const testNamespace = "http-service-test"

func startService(t *testing.T) *testEnv {
	t.Helper()
	mr := miniredis.RunT(t)
	rc := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { rc.Close() })
	o := options{namespace: testNamespace, keys: 100, storeLatency: time.Millisecond}
	svc, err := newService(rc, o, log.New(t.Output(), "http-service: ", 0))
	if err != nil {
		t.Fatalf("newService: %v", err)
	}
	t.Cleanup(func() {
		if err := svc.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	srv := httptest.NewServer(svc.routes())
	t.Cleanup(srv.Close)
	e := &testEnv{mr: mr, rc: rc, svc: svc, srv: srv}
	eventually(t, "the invalidation stream to be healthy", func() bool { return svc.cache.Stats().Health.Healthy })
	return e
}

// do sends a request and returns the status, the Content-Type and the body.
func (e *testEnv) do(t *testing.T, method, path, body string) (int, string, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, e.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
}

// expect sends a request and fails the test unless it gets want.
func (e *testEnv) expect(t *testing.T, method, path, body string, want int) string {
	t.Helper()
	code, _, got := e.do(t, method, path, body)
	if code != want {
		t.Fatalf("%s %s: got status %d, want %d; body: %s", method, path, code, want, got)
	}
	return got
}

// traffic exercises every tier: loads, L1 hits, an L2 hit (the first read
// after a PUT, which dropped the local copy and wrote Redis), a cached
// not-found and a delete.
func (e *testEnv) traffic(t *testing.T) {
	t.Helper()
	for _, id := range []string{"r1", "r2", "r3", "r1", "r1", "r2"} {
		e.expect(t, http.MethodGet, "/records/"+id, "", http.StatusOK)
	}
	// A fill is served at once, but may miss for a moment while it is
	// handed to ristretto: read until a read was an L1 hit.
	e.l1Hit(t, "/records/r2")
	e.expect(t, http.MethodPut, "/records/r1", `{"name":"renamed","value":42}`, http.StatusOK)
	if got := e.expect(t, http.MethodGet, "/records/r1", "", http.StatusOK); !strings.Contains(got, `"renamed"`) {
		t.Fatalf("GET /records/r1 after the PUT: got %s, want the renamed record", got)
	}
	e.expect(t, http.MethodGet, "/records/absent", "", http.StatusNotFound)
	e.expect(t, http.MethodGet, "/records/absent", "", http.StatusNotFound)
	e.expect(t, http.MethodDelete, "/records/r3", "", http.StatusNoContent)

	st := e.svc.cache.Stats()
	if st.L1.Hits == 0 || st.L2.Hits == 0 || st.Loads.LoaderCalls == 0 || st.L2.Store.LatencyHistogram.Count == 0 {
		t.Fatalf("the traffic left a tier unused (the comparisons would prove little): L1 hits %d, L2 hits %d, loader calls %d, Redis round trips %d",
			st.L1.Hits, st.L2.Hits, st.Loads.LoaderCalls, st.L2.Store.LatencyHistogram.Count)
	}
}

// l1Hit reads path until a read is answered by L1.
func (e *testEnv) l1Hit(t *testing.T, path string) {
	t.Helper()
	eventually(t, "an L1 hit on "+path, func() bool {
		hits := e.svc.cache.Stats().L1.Hits
		e.expect(t, http.MethodGet, path, "", http.StatusOK)
		return e.svc.cache.Stats().L1.Hits > hits
	})
}

// settled runs fetch until the cache's Stats are the same just before and
// just after it (counters only grow, so nothing changed in between: an own
// invalidation arriving late, a repair), and returns those Stats. The
// anti-entropy round counters, which tick every second, are left out. The
// event log must have recorded every repair the Stats count when fetch
// starts (the bus counts a repair just before the Observer hears of it), so
// that it holds exactly those while fetch runs.
func (e *testEnv) settled(t *testing.T, fetch func()) tiered.Stats {
	t.Helper()
	var st tiered.Stats
	eventually(t, "Stats that do not change while a page is fetched", func() bool {
		before := e.svc.cache.Stats()
		logged := e.svc.events.recent().Repairs.Total
		fetch()
		after := e.svc.cache.Stats()
		st = before
		return logged == before.Invalidation.InvalidateAllTotal() &&
			reflect.DeepEqual(withoutAERounds(before), withoutAERounds(after))
	})
	return st
}

func withoutAERounds(st tiered.Stats) tiered.Stats {
	st.Invalidation.AERounds, st.Invalidation.AEErrors = 0, 0
	return st
}

// eventually polls cond (redistest.WaitFor) for at most 10 seconds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	redistest.WaitFor(t, 10*time.Second, what, cond)
}

// TestRunLoad runs the -load mode end to end on a Redis of the test's own:
// the server, the Zipf clients, the report, and the removal of the run's
// namespace at the end.
func TestRunLoad(t *testing.T) {
	mr := miniredis.RunT(t)
	o := options{
		redisAddr: mr.Addr(), namespace: "http-service", load: 500 * time.Millisecond,
		keys: 200, clients: 4, writes: 0.1, zipfS: 1.1, storeLatency: time.Millisecond,
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := run(ctx, o); err != nil {
		t.Fatalf("run -load: %v", err)
	}
	if keys := mr.Keys(); len(keys) > 0 {
		t.Errorf("the load run left %d keys in Redis, want none: %v", len(keys), keys)
	}
}
