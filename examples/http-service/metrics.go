package main

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	nearcacheprom "github.com/nearcache/nearcache/contrib/prometheus"
	"github.com/nearcache/nearcache/tiered"
)

// newRegistry returns the registry that GET /metrics serves: the caches'
// figures (the collector reads their Stats at each scrape, so nothing is
// recorded on the request path) beside the Go runtime's and the process's.
// It is a registry of its own, never prometheus.DefaultRegisterer: nothing
// registered elsewhere in the program ends up in it, and each service (a
// test builds several) has its own.
func newRegistry(caches ...tiered.StatsSource) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{
		nearcacheprom.NewCollector(caches...),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return reg, nil
}

// metricsHandler serves the registry in the exposition format the scraper
// asks for (the text format by default).
func (s *service) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.metrics, promhttp.HandlerOpts{
		ErrorLog: s.log,
		// A collector that fails is logged and left out of that scrape;
		// the others are still served.
		ErrorHandling: promhttp.ContinueOnError,
	})
}
