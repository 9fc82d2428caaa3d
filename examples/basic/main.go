// Command basic is the smallest complete use of a Cache, to copy into a
// service: a Redis client, a Cache, a read through a loader, and a database
// write followed by the recommended cache call.
//
//	go run ./examples/basic                 # embedded miniredis
//	go run ./examples/basic -addr host:6379 # a real Redis
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/tiered"
)

type User struct {
	Name    string
	Version uint64 // the row's version: the time of its last commit
}

var db = map[string]User{"42": {Name: "Ada", Version: uint64(time.Now().UnixNano())}} // stands in for the database

func main() {
	addr := flag.String("addr", "", "Redis address (host:port); empty starts an embedded miniredis")
	flag.Parse()
	if *addr == "" {
		mr := must(miniredis.Run())
		defer mr.Close()
		*addr = mr.Addr()
	}
	ctx := context.Background()

	// ContextTimeoutEnabled lets the Cache bound each Redis call (RedisTimeout).
	rdb := redis.NewClient(&redis.Options{Addr: *addr, ContextTimeoutEnabled: true})
	defer rdb.Close()
	users := must(tiered.New(tiered.Config[User]{Redis: rdb, Namespace: "users", TTL: 10 * time.Minute}))
	defer users.Close() // runs before rdb.Close: a Cache never closes its client

	load := func(ctx context.Context, id string) (User, error) {
		u, ok := db[id] // a real loader queries the database with ctx
		if !ok {
			return User{}, tiered.ErrNotFound
		}
		return u, nil
	}
	fmt.Println("read:", must(users.GetOrLoad(ctx, "42", load)).Name)

	// A write: update the row, then Set the new value with the row's version.
	// An older write that reaches the cache later is refused with ErrStale.
	u := User{Name: "Ada Lovelace", Version: uint64(time.Now().UnixNano())}
	db["42"] = u
	if err := users.Set(ctx, "42", u, tiered.WithVersion(u.Version)); err != nil && !errors.Is(err, tiered.ErrStale) {
		log.Fatal(err)
	}
	fmt.Println("read after the write:", must(users.GetOrLoad(ctx, "42", load)).Name)

	// A delete: delete the row, then the key.
	delete(db, "42")
	if err := users.Delete(ctx, "42"); err != nil {
		log.Fatal(err)
	}
	_, err := users.GetOrLoad(ctx, "42", load)
	fmt.Println("read after the delete:", err)
}

func must[T any](v T, err error) T {
	if err != nil {
		log.Fatal(err)
	}
	return v
}
