package main

import (
	"context"
	"encoding/json"
	"errors"
	"log"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/tiered"
)

// Record is what the service stores and serves.
type Record struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Value     int64     `json:"value"`
	Version   int64     `json:"version"`
	UpdatedAt time.Time `json:"updated_at"`
}

// store is the slow source of truth.
type store struct {
	latency       time.Duration
	reads, writes atomic.Int64
	mu            sync.RWMutex
	rows          map[string]Record // guarded by mu
}

func newStore(latency time.Duration, n int) *store {
	s := &store{latency: latency, rows: make(map[string]Record, n)}
	now := time.Now().UTC()
	for i := range n {
		id := "r" + strconv.Itoa(i)
		s.rows[id] = Record{ID: id, Name: "record " + strconv.Itoa(i), Value: int64(i), Version: 1, UpdatedAt: now}
	}
	return s
}

func (s *store) wait(ctx context.Context) error {
	t := time.NewTimer(s.latency)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Load is the cache's loader: one slow query.
func (s *store) Load(ctx context.Context, id string) (Record, error) {
	s.reads.Add(1)
	if err := s.wait(ctx); err != nil {
		return Record{}, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.rows[id]
	if !ok {
		return Record{}, tiered.ErrNotFound
	}
	return r, nil
}

func (s *store) Put(ctx context.Context, r Record) (Record, error) {
	s.writes.Add(1)
	if err := s.wait(ctx); err != nil {
		return Record{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r.Version = s.rows[r.ID].Version + 1
	r.UpdatedAt = time.Now().UTC()
	s.rows[r.ID] = r
	return r, nil
}

func (s *store) Delete(ctx context.Context, id string) (bool, error) {
	s.writes.Add(1)
	if err := s.wait(ctx); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.rows[id]
	delete(s.rows, id)
	return ok, nil
}

// service holds the HTTP handlers and what they serve.
type service struct {
	cache   *tiered.Cache[Record]
	store   *store
	events  *eventLog            // the cache's recent repairs, breaker changes and stale values served
	metrics *prometheus.Registry // what GET /metrics serves
	log     *log.Logger
}

// newService builds the service over rc: a cache in namespace o.namespace
// whose Observer feeds the debug page's event log, a backing store of
// o.keys records with o.storeLatency per query, and the Prometheus registry
// of /metrics. Close it to close the cache.
func newService(rc redis.UniversalClient, o options, logger *log.Logger) (*service, error) {
	events := newEventLog(recentEvents)
	cache, err := tiered.New(tiered.Config[Record]{
		Redis:       rc,
		Namespace:   o.namespace,
		NegativeTTL: 10 * time.Second, // cache 404s too
		Observer:    events.observer(),
	})
	if err != nil {
		return nil, err
	}
	reg, err := newRegistry(cache)
	if err != nil {
		cache.Close()
		return nil, err
	}
	return &service{
		cache:   cache,
		store:   newStore(o.storeLatency, o.keys),
		events:  events,
		metrics: reg,
		log:     logger,
	}, nil
}

// Close closes the cache (the Redis client is the caller's). It may be
// called more than once.
func (s *service) Close() error { return s.cache.Close() }

func (s *service) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /records/{id}", s.getRecord)
	mux.HandleFunc("PUT /records/{id}", s.putRecord)
	mux.HandleFunc("DELETE /records/{id}", s.deleteRecord)
	mux.HandleFunc("GET /stats", s.stats)
	mux.Handle("GET /metrics", s.metricsHandler())
	mux.HandleFunc("GET /debug/nearcache", s.debugPage)
	mux.HandleFunc("GET /debug/nearcache.json", s.debugJSON)
	return mux
}

func (s *service) getRecord(w http.ResponseWriter, r *http.Request) {
	rec, err := s.cache.GetOrLoad(r.Context(), r.PathValue("id"), s.store.Load)
	switch {
	case errors.Is(err, tiered.ErrNotFound):
		httpError(w, http.StatusNotFound, "record not found")
	case r.Context().Err() != nil:
		// The client went away; nobody reads the answer.
	case err != nil:
		s.log.Printf("GET %s: %v", r.PathValue("id"), err)
		httpError(w, http.StatusServiceUnavailable, "backing store unavailable")
	default:
		writeJSON(w, http.StatusOK, rec)
	}
}

func (s *service) putRecord(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Name  string `json:"name"`
		Value int64  `json:"value"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		httpError(w, http.StatusBadRequest, "body must be JSON {\"name\": string, \"value\": integer}: "+err.Error())
		return
	}
	rec, err := s.store.Put(r.Context(), Record{ID: r.PathValue("id"), Name: body.Name, Value: body.Value})
	if err != nil {
		httpError(w, http.StatusServiceUnavailable, "backing store unavailable")
		return
	}
	// Write-through: Redis and every instance's L1 learn of the change in
	// one atomic step. If Redis is unavailable the write is not
	// acknowledged by the cache; drop the key so nobody keeps the old value
	// longer than needed (the store, the source of truth, has the new one).
	if err := s.cache.Set(r.Context(), rec.ID, rec); err != nil {
		s.log.Printf("PUT %s: cache: %v", rec.ID, err)
		if err := s.cache.Delete(r.Context(), rec.ID); err != nil {
			s.log.Printf("PUT %s: other instances may serve the old value until their L1 TTL ends: %v", rec.ID, err)
		}
	}
	writeJSON(w, http.StatusOK, rec)
}

func (s *service) deleteRecord(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	existed, err := s.store.Delete(r.Context(), id)
	if err != nil {
		httpError(w, http.StatusServiceUnavailable, "backing store unavailable")
		return
	}
	if err := s.cache.Delete(r.Context(), id); err != nil {
		s.log.Printf("DELETE %s: other instances may serve the old value until their L1 TTL ends: %v", id, err)
	}
	if !existed {
		httpError(w, http.StatusNotFound, "record not found")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *service) stats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.cache.Stats())
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func httpError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
