// Package bench compares nearcache with the caches users would pick instead
// (go-redis/cache, rueidis client-side caching) and with the raw floors
// (ristretto, go-redis), on identical workloads against one real
// redis-server. It is a separate module so that the library's go.mod never
// depends on these peers. Run ./run.sh to reproduce BENCHMARKS.md.
package bench
