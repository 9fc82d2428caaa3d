package l2

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Notification is published atomically with a write. The published payload
// is Body followed immediately by the partition's new sequence number in
// ASCII decimal; l2 does not otherwise interpret it.
type Notification struct {
	Channel string
	// SeqKey is the partition's sequence key. On a Cluster it must hash to the
	// partition's slot (use a hash tag), so the script stays single-slot.
	SeqKey string
	Body   []byte
}

// NotifyFunc builds the notification for one group of keys written together:
// partition is their hash slot on a Cluster (0 otherwise), keys are the
// caller's keys without the prefix. Clear calls it with partition 0 and no keys.
type NotifyFunc func(partition int, keys []string) Notification

// WriteOption adjusts one write.
type WriteOption interface{ applyWrite(*writeOptions) }

type writeOptions struct {
	notify NotifyFunc
}

type notifyOption NotifyFunc

func (n notifyOption) applyWrite(o *writeOptions) { o.notify = NotifyFunc(n) }

// Notify makes a write publish the notifications fn builds, one per partition,
// each in the same Lua script as the partition's writes: the write is never
// acknowledged without its notification, and never notified without the write.
func Notify(fn NotifyFunc) WriteOption { return notifyOption(fn) }

func applyWrite(opts []WriteOption) writeOptions {
	var o writeOptions
	for _, opt := range opts {
		if opt != nil {
			opt.applyWrite(&o)
		}
	}
	return o
}

// notifyScript: KEYS = data keys..., sequence key (last). ARGV = channel,
// body, mode ("set" | "del" | "none"), then for "set" one (value, ttl ms)
// pair per data key. The sequence key is validated before anything is
// written, so no error can occur after the first write: the writes, the new
// sequence and the PUBLISH happen together or not at all.
var notifyScript = redis.NewScript(`
local n = #KEYS - 1
local seqkey = KEYS[#KEYS]
local cur = redis.call('GET', seqkey)
local seq = 0
if cur then
  seq = tonumber(cur)
  if seq == nil or seq < 0 or seq ~= math.floor(seq) then
    return redis.error_reply('ERR nearcache: sequence key holds a non-integer: ' .. seqkey)
  end
end
local res = 0
local mode = ARGV[3]
if mode == 'set' then
  for i = 1, n do
    local ttl = ARGV[3 + 2*i]
    if ttl == '0' then
      redis.call('SET', KEYS[i], ARGV[2 + 2*i])
    else
      redis.call('SET', KEYS[i], ARGV[2 + 2*i], 'PX', ttl)
    end
  end
  res = n
elseif mode == 'del' then
  for i = 1, n do
    res = res + redis.call('UNLINK', KEYS[i])
  end
end
local s = string.format('%d', seq + 1)
redis.call('SET', seqkey, s)
redis.call('PUBLISH', ARGV[1], ARGV[2] .. s)
return res
`)

func (s *Store) evalNotify(ctx context.Context, c redis.Scripter, dataKeys []string, n Notification, mode string, pairs []any) *redis.Cmd {
	keys := append(dataKeys[:len(dataKeys):len(dataKeys)], n.SeqKey)
	argv := make([]any, 0, 3+len(pairs))
	argv = append(argv, n.Channel, n.Body, mode)
	argv = append(argv, pairs...)
	return notifyScript.Run(ctx, c, keys, argv...)
}

// runNotify runs the notify script once per partition group and adds the
// script results (keys deleted) to count when non-nil. A single group uses
// EVALSHA (falling back to EVAL); several groups are pipelined with EVAL so a
// cold script cache cannot fail half a batch.
func (s *Store) runNotify(ctx context.Context, keys []string, fn NotifyFunc,
	pairs func(g slotGroup, argv []any) []any, mode string, count *atomic.Int64) error {
	groups := s.groups(keys)
	all := s.prefixAll(keys)
	type call struct {
		full []string
		n    Notification
		argv []any
	}
	calls := make([]call, len(groups))
	for gi, g := range groups {
		full := pick(all, g.idx)
		n := fn(g.slot, pick(keys, g.idx))
		if n.Channel == "" || n.SeqKey == "" {
			return fmt.Errorf("notification for partition %d has an empty channel or sequence key", g.slot)
		}
		var argv []any
		if pairs != nil {
			argv = pairs(g, make([]any, 0, 2*len(g.idx)))
		}
		calls[gi] = call{full: full, n: n, argv: argv}
	}
	if len(calls) == 1 {
		c := calls[0]
		v, err := s.evalNotify(ctx, s.client, c.full, c.n, mode, c.argv).Int64()
		if err != nil {
			return err
		}
		if count != nil {
			count.Add(v)
		}
		s.notifies.Add(1)
		return nil
	}
	cmds := make([]*redis.Cmd, len(calls))
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, c := range calls {
			keys := append(c.full, c.n.SeqKey)
			argv := append([]any{c.n.Channel, c.n.Body, mode}, c.argv...)
			cmds[i] = notifyScript.Eval(ctx, p, keys, argv...)
		}
		return nil
	})
	for _, c := range cmds {
		if c == nil || c.Err() != nil {
			continue
		}
		s.notifies.Add(1)
		if v, e := c.Int64(); e == nil && count != nil {
			count.Add(v)
		}
	}
	return err
}
