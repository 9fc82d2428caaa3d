package l2

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/wire"
)

// Claim takes the refresh claim of key for ttl if nobody holds it (SET NX
// PX of the claim key, see wire.ClaimKey): of the processes that race for
// a key's claim, one gets true, and the others false until the holder
// releases it or ttl passes. token identifies the holder for Release; make
// it unique per attempt. A claim is advisory: it orders refreshes, it
// guards no data (the write-back's compare-and-set does).
func (s *Store) Claim(ctx context.Context, key, token string, ttl time.Duration) (bool, error) {
	if s.closed.Load() {
		return false, s.closedErr("claim", key)
	}
	if ttl < time.Millisecond {
		return false, newError("claim", []string{key}, ErrOperation, fmt.Errorf("claim ttl %v is below 1ms", ttl))
	}
	ok, err := s.client.SetNX(ctx, wire.ClaimKey(s.prefix, key), token, ttl).Result()
	if err != nil {
		return false, s.fail("claim", err, key)
	}
	return ok, nil
}

// releaseScript drops (ARGV[2] == "0") or shortens to ARGV[2] ms the claim
// KEYS[1] if ARGV[1] still holds it. It uses only commands the Cache's
// Redis user has anyway (README, "Redis ACLs"): a script's commands are
// checked against the caller's ACL, and a refused release would leave the
// claim held until it expires.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then return redis.call('UNLINK', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`)

// Release gives up the claim of key taken with token: at once if keep is
// zero, else after keep (so that a failed refresh holds the others back
// that long). A claim that expired or that another holder took meanwhile is
// left alone.
func (s *Store) Release(ctx context.Context, key, token string, keep time.Duration) error {
	if s.closed.Load() {
		return s.closedErr("release", key)
	}
	ms := max(keep.Milliseconds(), 0)
	if keep > 0 && ms == 0 {
		ms = 1
	}
	err := releaseScript.Run(ctx, s.client, []string{wire.ClaimKey(s.prefix, key)}, token, ms).Err()
	if err != nil && err != redis.Nil {
		return s.fail("release", err, key)
	}
	return nil
}

// ClaimMany is Claim for several keys in one pipeline (one round trip per
// node on a Cluster): it reports, per key, whether this token took its
// claim. A key whose claim someone else holds is false.
func (s *Store) ClaimMany(ctx context.Context, keys []string, token string, ttl time.Duration) (map[string]bool, error) {
	if s.closed.Load() {
		return nil, s.closedErr("claim", keys...)
	}
	if ttl < time.Millisecond {
		return nil, newError("claim", keys, ErrOperation, fmt.Errorf("claim ttl %v is below 1ms", ttl))
	}
	if len(keys) == 0 {
		return map[string]bool{}, nil
	}
	cmds := make([]*redis.BoolCmd, len(keys))
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.SetNX(ctx, wire.ClaimKey(s.prefix, k), token, ttl)
		}
		return nil
	})
	won := make(map[string]bool, len(keys))
	for i, k := range keys {
		ok, cerr := cmds[i].Result()
		if cerr == nil && ok {
			won[k] = true
		}
	}
	if err != nil {
		return won, s.fail("claim", err, keys...)
	}
	return won, nil
}

// ReleaseMany is Release for several keys of one token, in one pipeline.
func (s *Store) ReleaseMany(ctx context.Context, keys []string, token string, keep time.Duration) error {
	if s.closed.Load() {
		return s.closedErr("release", keys...)
	}
	if len(keys) == 0 {
		return nil
	}
	ms := max(keep.Milliseconds(), 0)
	if keep > 0 && ms == 0 {
		ms = 1
	}
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			releaseScript.Eval(ctx, p, []string{wire.ClaimKey(s.prefix, k)}, token, ms)
		}
		return nil
	})
	if err != nil && err != redis.Nil {
		return s.fail("release", err, keys...)
	}
	return nil
}
