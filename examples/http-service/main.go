// Command http-service is a small HTTP service that serves records from a
// deliberately slow backing store (an in-memory map behind a fixed latency,
// standing in for a database) through a nearcache tiered.Cache, and shows
// how to watch such a cache: Prometheus metrics and a debug page.
//
// It is a module of its own (it needs the Prometheus client, which the core
// module does not depend on), so it is run from its directory:
//
//	cd examples/http-service
//	go run .
//	go run . -addr 127.0.0.1:6379 -listen 127.0.0.1:8080
//
// Without -addr (or $REDIS_ADDR) it starts an embedded Redis (miniredis).
// Then, from another terminal:
//
//	curl -s localhost:8080/records/r1
//	curl -s -X PUT localhost:8080/records/r1 -d '{"name":"renamed","value":42}'
//	curl -s -X DELETE localhost:8080/records/r1
//	curl -s localhost:8080/metrics | grep '^nearcache_l1'
//
// and open http://localhost:8080/debug/nearcache in a browser.
//
// Endpoints:
//
//	GET    /records/{id}           the record, through the cache (404 if absent)
//	PUT    /records/{id}           create or replace it: JSON {"name": ..., "value": ...}
//	DELETE /records/{id}           delete it (404 if absent)
//	GET    /stats                  the cache's tiered.Stats, as JSON
//	GET    /metrics                Prometheus metrics: the cache's (nearcache_*, from
//	                               contrib/prometheus, label cache="NAMESPACE"), the Go
//	                               runtime's (go_*) and the process's (process_*), from a
//	                               registry of the service's own
//	GET    /debug/nearcache        a self-contained HTML page, refreshed every 2 s: hit
//	                               ratios (L1, L2, overall) and lookup counts per tier,
//	                               histograms and percentiles of Redis round trips, loader
//	                               calls and invalidation lag, the invalidation stream's
//	                               health, the circuit breaker's state, and the last 20
//	                               repairs (drops of the whole L1, with their cause),
//	                               breaker changes and stale values served
//	GET    /debug/nearcache.json   the same figures as JSON (durations in seconds)
//
// The page's figures come from one Stats snapshot per request; the events
// come from a tiered.Observer that keeps the last few of each kind. Metrics
// are read from Stats at scrape time: neither adds work to a cache hit.
// Like net/http/pprof's pages, /metrics and /debug/ are for operators: a
// real service serves them on an internal listener, not to the Internet.
//
// Several instances on different -listen ports with the same -addr behave as
// one service: a PUT or DELETE on one evicts the others' local copies.
//
// Load mode drives the service with a Zipf-distributed workload (a few hot
// records, a long tail) from concurrent clients for a while, printing a
// progress line each second, then throughput, latency percentiles and hit
// ratios, and exits:
//
//	cd examples/http-service
//	go run . -load 10s
//	go run . -load 10s -clients 64 -keys 100000 -writes 0.05
//
// SIGINT or SIGTERM shuts the server down gracefully (in-flight requests
// finish) in either mode.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/examples/internal/demo"
	"github.com/nearcache/nearcache/internal/hist"
)

type options struct {
	redisAddr    string
	listen       string
	namespace    string
	load         time.Duration
	keys         int
	clients      int
	writes       float64
	zipfS        float64
	storeLatency time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.redisAddr, "addr", os.Getenv("REDIS_ADDR"), "Redis address host:port (default $REDIS_ADDR); empty starts an embedded miniredis")
	flag.StringVar(&o.listen, "listen", "127.0.0.1:8080", "HTTP listen address (ignored with -load, which picks a free loopback port)")
	flag.StringVar(&o.namespace, "namespace", "http-service", "cache namespace (Redis key prefix and invalidation channel)")
	flag.DurationVar(&o.load, "load", 0, "instead of serving forever, drive the service with a Zipf workload for this long, report, and exit")
	flag.IntVar(&o.keys, "keys", 10_000, "number of records (the Zipf workload's key space)")
	flag.IntVar(&o.clients, "clients", 32, "concurrent clients in -load mode")
	flag.Float64Var(&o.writes, "writes", 0.02, "share of PUT requests in -load mode")
	flag.Float64Var(&o.zipfS, "zipf", 1.1, "Zipf exponent s (> 1; larger means hotter hot keys) in -load mode")
	flag.DurationVar(&o.storeLatency, "store-latency", 20*time.Millisecond, "simulated latency of each backing-store query")
	flag.Parse()
	switch {
	case o.keys < 1:
		usageError("-keys must be at least 1")
	case o.clients < 1:
		usageError("-clients must be at least 1")
	case o.writes < 0 || o.writes > 1:
		usageError("-writes must be between 0 and 1")
	case o.zipfS <= 1:
		usageError("-zipf must be greater than 1")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "http-service:", err)
		os.Exit(1)
	}
}

func usageError(msg string) {
	fmt.Fprintln(os.Stderr, "http-service:", msg)
	flag.Usage()
	os.Exit(2)
}

func run(ctx context.Context, o options) error {
	logger := log.New(os.Stderr, "http-service: ", log.LstdFlags)
	if o.redisAddr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return fmt.Errorf("start miniredis: %w", err)
		}
		defer mr.Close()
		o.redisAddr = mr.Addr()
		logger.Printf("using an embedded miniredis at %s (use -addr host:port for a real Redis)", o.redisAddr)
	}
	rc := redis.NewClient(&redis.Options{Addr: o.redisAddr, ContextTimeoutEnabled: true, PoolSize: max(10, o.clients)})
	defer rc.Close()
	if err := rc.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("connect to Redis at %s: %w", o.redisAddr, err)
	}
	if o.load > 0 {
		// A fresh namespace, so that a run starts cold and its keys can be
		// removed at the end without touching anything else.
		o.namespace = fmt.Sprintf("%s-load-%08x", o.namespace, rand.Uint32())
	}
	svc, err := newService(rc, o, logger)
	if err != nil {
		return err
	}
	defer svc.Close()
	srv := &http.Server{Handler: svc.routes(), ReadHeaderTimeout: 5 * time.Second, ErrorLog: logger}

	listen := o.listen
	if o.load > 0 {
		listen = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	shutdown := func() error {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			return fmt.Errorf("shutdown: %w", err)
		}
		if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}

	if o.load > 0 {
		runErr := drive(ctx, "http://"+ln.Addr().String(), o, svc)
		if err := shutdown(); err != nil {
			return err
		}
		// Leave nothing behind: Close waits for loads still running for
		// requests the clients abandoned at the end (their values would
		// otherwise land in Redis after a Clear), then remove the
		// namespace's keys, data and invalidation bookkeeping alike.
		if err := svc.Close(); err != nil {
			logger.Printf("close cache: %v", err)
		}
		if err := removeNamespace(context.Background(), rc, o.namespace); err != nil {
			logger.Printf("remove namespace %s: %v", o.namespace, err)
		}
		return runErr
	}

	logger.Printf("serving %d records on http://%s (namespace %q, store latency %v); try:", o.keys, ln.Addr(), o.namespace, o.storeLatency)
	logger.Printf("  curl -s http://%s/records/r1", ln.Addr())
	logger.Printf("  curl -s -X PUT http://%s/records/r1 -d '{\"name\":\"renamed\",\"value\":42}'", ln.Addr())
	logger.Printf("  curl -s http://%s/stats", ln.Addr())
	logger.Printf("metrics on http://%s/metrics, the cache's debug page on http://%s/debug/nearcache", ln.Addr(), ln.Addr())
	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	logger.Printf("shutting down")
	return shutdown()
}

// drive runs the Zipf workload against base until o.load has passed (or ctx
// ends), printing progress each second and a report at the end.
func drive(ctx context.Context, base string, o options, svc *service) error {
	fmt.Printf("Load: %v, %d clients, Zipf s=%.2f over %d records, %.1f%% writes, store latency %v\n",
		o.load, o.clients, o.zipfS, o.keys, 100*o.writes, o.storeLatency)
	ctx, cancel := context.WithTimeout(ctx, o.load)
	defer cancel()
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConns: o.clients, MaxIdleConnsPerHost: o.clients},
	}
	defer client.CloseIdleConnections()

	var done, failed atomic.Int64
	var reads, writes hist.Histogram // end-to-end latencies of completed requests
	var (
		errMu    sync.Mutex
		firstErr error // guarded by errMu
	)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range o.clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(start.UnixNano()), uint64(i)))
			zipf := rand.NewZipf(rng, o.zipfS, 1, uint64(o.keys-1))
			for ctx.Err() == nil {
				id := "r" + strconv.FormatUint(zipf.Uint64(), 10)
				write := rng.Float64() < o.writes
				t0 := time.Now()
				err := request(ctx, client, base, id, write, rng)
				took := time.Since(t0)
				if ctx.Err() != nil {
					return // cut short by the end of the run: not counted
				}
				if err != nil {
					failed.Add(1)
					errMu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
					continue
				}
				done.Add(1)
				if write {
					writes.Record(took)
				} else {
					reads.Record(took)
				}
			}
		})
	}

	// On a terminal the progress line is rewritten in place; in a log
	// (CI), each second gets its own line.
	eol, bol := "", "\r"
	if fi, err := os.Stdout.Stat(); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		eol, bol = "\n", ""
	}
	ticker := time.NewTicker(time.Second)
	var last int64
	for running := true; running; {
		select {
		case <-ctx.Done():
			running = false
		case <-ticker.C:
			n := done.Load()
			st := svc.cache.Stats().Combined
			fmt.Printf("%s  %3.0fs  %8.0f req/s  %9d requests  %d errors  L1 hit ratio %5.1f%%  overall hit ratio %5.1f%%  %s",
				bol, time.Since(start).Seconds(), float64(n-last), n, failed.Load(), 100*st.L1HitRatio, 100*st.HitRatio, eol)
			last = n
		}
	}
	ticker.Stop()
	wg.Wait()
	elapsed := time.Since(start)
	if eol == "" {
		fmt.Println()
	}

	rp, wp := reads.Snapshot(), writes.Snapshot()
	n := rp.Count + wp.Count
	st := svc.cache.Stats()
	tbl := func(label string, p hist.Percentiles) {
		if p.Count == 0 {
			fmt.Printf("  %-7s none\n", label)
			return
		}
		fmt.Printf("  %-4s p50 %-8s p90 %-8s p99 %-8s max %-8s (%d requests)\n", label,
			demo.Dur(p.P50), demo.Dur(p.P90), demo.Dur(p.P99), demo.Dur(p.Max), p.Count)
	}
	fmt.Printf("Throughput: %d requests in %v = %.0f req/s (%d failed)\n", n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), failed.Load())
	fmt.Println("Latency, end to end over HTTP:")
	tbl("GET", rp)
	tbl("PUT", wp)
	fmt.Println("Cache:")
	fmt.Printf("  L1 hit ratio       %5.1f%%  (%d of %d lookups)\n", 100*st.Combined.L1HitRatio, st.L1.Hits, st.Combined.Requests)
	fmt.Printf("  L2 hit ratio       %5.1f%%  (%d of %d Redis lookups)\n", 100*st.Combined.L2HitRatio, st.L2.Hits, st.L2.Lookups)
	fmt.Printf("  overall hit ratio  %5.1f%%  (requests answered without the backing store)\n", 100*st.Combined.HitRatio)
	fmt.Printf("  loader calls %d, coalesced waiters %d, Redis round trip p99 %s, Redis errors %d\n",
		st.Loads.LoaderCalls, st.Loads.Coalesced, demo.Dur(st.L2.Store.Latency.P99), st.L2.Errors)
	fmt.Printf("Backing store: %d reads (for %d GETs), %d writes\n", svc.store.reads.Load(), rp.Count, svc.store.writes.Load())
	if f := failed.Load(); f > 0 {
		return fmt.Errorf("%d requests failed; first: %v", f, firstErr)
	}
	if n == 0 {
		return errors.New("no request completed")
	}
	return nil
}

// removeNamespace deletes every key of a namespace nobody uses any more.
func removeNamespace(ctx context.Context, rc *redis.Client, namespace string) error {
	iter := rc.Scan(ctx, 0, "*"+namespace+":*", 1000).Iterator()
	for iter.Next(ctx) {
		if err := rc.Unlink(ctx, iter.Val()).Err(); err != nil {
			return err
		}
	}
	return iter.Err()
}

func request(ctx context.Context, client *http.Client, base, id string, write bool, rng *rand.Rand) error {
	method, body := http.MethodGet, io.Reader(nil)
	if write {
		method = http.MethodPut
		body = bytes.NewReader(fmt.Appendf(nil, `{"name":"record %s","value":%d}`, id, rng.Int64N(1_000_000)))
	}
	req, err := http.NewRequestWithContext(ctx, method, base+"/records/"+id, body)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s", method, id, resp.Status)
	}
	return nil
}
