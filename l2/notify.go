package l2

import (
	"context"
	"fmt"
	"time"

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
	notify     NotifyFunc
	tombstone  time.Duration // deletes write tombstones living this long
	version    uint64        // deletes: the version of the delete (0: unversioned)
	notifyKeys NotifyFunc    // Clear: notification of each removed batch
}

type notifyKeysOption NotifyFunc

func (n notifyKeysOption) applyWrite(o *writeOptions) { o.notifyKeys = NotifyFunc(n) }

// NotifyKeys makes Clear remove each batch of keys in the write script,
// publishing fn's notification for the batch's keys (one per partition)
// atomically with their removal. Other writes ignore it.
func NotifyKeys(fn NotifyFunc) WriteOption { return notifyKeysOption(fn) }

type versionOption uint64

func (v versionOption) applyWrite(o *writeOptions) { o.version = uint64(v) }

// Version makes Delete and DeleteMany versioned: each key's tombstone (the
// option needs Tombstone) carries version v, and a key whose stored version
// is as new or newer is left alone and reported in a *StaleError (ErrStale).
// Versioned sets take their version from Entry.Version. Zero: unversioned.
func Version(v uint64) WriteOption { return versionOption(v) }

type tombstoneOption time.Duration

func (t tombstoneOption) applyWrite(o *writeOptions) { o.tombstone = time.Duration(t) }

// Tombstone makes Delete and DeleteMany replace each key with a tombstone
// that expires after ttl instead of removing it. A tombstone reads as
// ErrNotFound through Get, but SetIf with old == nil (only if absent) will
// not overwrite it: a load that began before the delete cannot write its
// older value back while the tombstone lives. Choose ttl longer than the
// longest load. ttl <= 0 means a plain delete.
func Tombstone(ttl time.Duration) WriteOption { return tombstoneOption(ttl) }

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

// notifyScript: KEYS = data keys..., sequence key (last, only when the
// channel is not empty). ARGV = channel ("" = write without notification),
// body, mode, then per data key: for "set" and "tomb" (value, ttl ms); for
// "cas" (value, ttl ms, expected bytes; "" = must be absent); for "vset" and
// "vtomb" (value, ttl ms, version as 8 big-endian bytes; "" = unversioned);
// "del" and "none" take nothing. The sequence key is validated before
// anything is written, and nothing after the first write can fail, so the
// writes, the new sequence and the PUBLISH happen together or not at all.
//
// "vset"/"vtomb" refuse a versioned write whose version is not above the
// stored one. Every other write ("set", "tomb", "cas", an unversioned key of
// "vset") goes through but keeps the stored version, inserted into the new
// envelope (inherit): Redis remembers the highest version of a key while the
// key lives, and every write over a versioned value ("vtomb", and any write
// that keeps a version) lives at least as long as that value would have
// (outlive; forever if it had no expiry), so no write shortens that memory.
// Bytes that Go's decoder would reject (unknown flags, version 0) carry no
// version. A "cas" write-back is safe to
// label with the version it replaces: it read exactly those bytes before its
// loader read the database. These modes
// publish only if they wrote at least one key. "cas" returns one 0/1 flag
// per key; "vset" returns per key 1 (written) or the stored version (8
// bytes) that refused it, and "vtomb" the same with 2 for a key that was
// absent; the other modes return a count (keys
// written, or keys that existed). The stored version is read from the
// envelope (see envelope.go): magic 0xC7, format 1, flags, then the soft and
// hard expiries when flagged, then the version when flag 0x20 is set.
var notifyScript = redis.NewScript(`
local notify = ARGV[1] ~= ''
local n = #KEYS
local seqkey, cur
if notify then
  n = n - 1
  seqkey = KEYS[#KEYS]
  cur = redis.call('GET', seqkey)
end
local seq = 0
if cur then
  seq = tonumber(cur)
  if seq == nil or seq < 0 or seq ~= math.floor(seq) then
    return redis.error_reply('ERR nearcache: sequence key holds a non-integer: ' .. seqkey)
  end
end
local function verOffset(flags)
  local off = 4
  if flags % 8 >= 4 then off = off + 8 end
  if flags % 16 >= 8 then off = off + 8 end
  return off
end
local function version(v)
  if type(v) ~= 'string' or #v < 3 or string.byte(v, 1) ~= 199 or string.byte(v, 2) ~= 1 then
    return nil
  end
  local flags = string.byte(v, 3)
  if flags >= 64 or flags < 32 then return nil end
  local off = verOffset(flags)
  if #v < off + 7 then return nil end
  local ver = string.sub(v, off, off + 7)
  if ver == string.char(0, 0, 0, 0, 0, 0, 0, 0) then return nil end
  return ver
end
local function newer(a, b)
  for i = 1, 8 do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return false
end
local function inherit(v, ver)
  local flags = string.byte(v, 3)
  if flags % 64 >= 32 then return v end
  local off = verOffset(flags)
  return string.sub(v, 1, 2) .. string.char(flags + 32) .. string.sub(v, 4, off - 1) .. ver .. string.sub(v, off)
end
local function outlive(k, ttl)
  if ttl == '0' then return ttl end
  local left = redis.call('PTTL', k)
  if left == -1 then return '0' end
  if left > tonumber(ttl) then return tostring(left) end
  return ttl
end
local function keep(k, have, v, ttl)
  local stored = version(have)
  if stored then return inherit(v, stored), outlive(k, ttl) end
  return v, ttl
end
local function put(k, v, ttl)
  if ttl == '0' then
    redis.call('SET', k, v)
  else
    redis.call('SET', k, v, 'PX', ttl)
  end
end
local res = 0
local mode = ARGV[3]
if mode == 'set' then
  for i = 1, n do put(KEYS[i], keep(KEYS[i], redis.pcall('GET', KEYS[i]), ARGV[2 + 2*i], ARGV[3 + 2*i])) end
  res = n
elseif mode == 'tomb' then
  for i = 1, n do
    local have = redis.pcall('GET', KEYS[i])
    if have ~= false then res = res + 1 end
    put(KEYS[i], keep(KEYS[i], have, ARGV[2 + 2*i], ARGV[3 + 2*i]))
  end
elseif mode == 'del' then
  for i = 1, n do res = res + redis.call('UNLINK', KEYS[i]) end
elseif mode == 'cas' then
  res = {}
  local wrote = false
  for i = 1, n do
    local have = redis.pcall('GET', KEYS[i])
    local want = ARGV[3 + 3*i]
    if type(have) == 'table' and have.err then
      res[i] = 0
    elseif (have == false and want == '') or (have ~= false and have == want) then
      put(KEYS[i], keep(KEYS[i], have, ARGV[1 + 3*i], ARGV[2 + 3*i]))
      res[i] = 1
      wrote = true
    else
      res[i] = 0
    end
  end
  if not wrote then return res end
elseif mode == 'vset' or mode == 'vtomb' then
  res = {}
  local wrote = false
  for i = 1, n do
    local ver = ARGV[3 + 3*i]
    local have = redis.pcall('GET', KEYS[i])
    local stored = nil
    if ver ~= '' and type(have) == 'string' then stored = version(have) end
    if stored and not newer(ver, stored) then
      res[i] = stored
    else
      local val, ttl = ARGV[1 + 3*i], ARGV[2 + 3*i]
      if ver == '' then
        val, ttl = keep(KEYS[i], have, val, ttl)
      elseif mode == 'vtomb' then
        ttl = outlive(KEYS[i], ttl)
      end
      put(KEYS[i], val, ttl)
      res[i] = 1
      if mode == 'vtomb' and have == false then res[i] = 2 end
      wrote = true
    end
  end
  if not wrote then return res end
end
if not notify then return res end
local s = string.format('%d', seq + 1)
redis.call('SET', seqkey, s)
redis.call('PUBLISH', ARGV[1], ARGV[2] .. s)
return res
`)

// published reports whether a script with a notification published it: the
// modes that return a flag per key publish only if they wrote a key.
func published(reply any) bool {
	flags, ok := reply.([]any)
	if !ok {
		return true // a count: the script always publishes
	}
	for _, f := range flags {
		if n, _ := f.(int64); n == 1 || n == 2 {
			return true
		}
	}
	return false
}

// scriptArgs builds KEYS and ARGV for one script call.
func scriptArgs(dataKeys []string, n *Notification, mode string, perKey []any) ([]string, []any) {
	keys := dataKeys
	argv := make([]any, 0, 3+len(perKey))
	if n != nil {
		keys = append(dataKeys[:len(dataKeys):len(dataKeys)], n.SeqKey)
		argv = append(argv, n.Channel, n.Body, mode)
	} else {
		argv = append(argv, "", "", mode)
	}
	return keys, append(argv, perKey...)
}

// runScript runs notifyScript once per partition group of keys (one group on
// a standalone server): perKey returns ARGV for one key index, fn (nil: no
// notification) builds the group's notification, and reply receives each
// group's result. A single group uses EVALSHA (falling back to EVAL); several
// are pipelined with EVAL, so a cold script cache cannot fail half a batch.
func (s *Store) runScript(ctx context.Context, keys []string, fn NotifyFunc, mode string,
	perKey func(i int, argv []any) []any, reply func(g slotGroup, v any)) error {
	groups := s.groups(keys) // a script's keys must share a slot
	if len(groups) == 0 {
		groups = []slotGroup{{slot: 0}} // Clear: a notification alone
	}
	all := s.prefixAll(keys)
	type call struct {
		keys []string
		argv []any
	}
	calls := make([]call, len(groups))
	for gi, g := range groups {
		var n *Notification
		if fn != nil {
			nn := fn(g.slot, pick(keys, g.idx))
			if nn.Channel == "" || nn.SeqKey == "" {
				return fmt.Errorf("notification for partition %d has an empty channel or sequence key", g.slot)
			}
			n = &nn
		}
		var argv []any
		if perKey != nil {
			for _, i := range g.idx {
				argv = perKey(i, argv)
			}
		}
		calls[gi].keys, calls[gi].argv = scriptArgs(pick(all, g.idx), n, mode, argv)
	}
	done := func(gi int, v any) {
		if fn != nil && published(v) {
			s.notifies.Add(1)
		}
		if reply != nil {
			reply(groups[gi], v)
		}
	}
	if len(calls) == 1 {
		v, err := notifyScript.Run(ctx, s.client, calls[0].keys, calls[0].argv...).Result()
		if err != nil {
			return err
		}
		done(0, v)
		return nil
	}
	cmds := make([]*redis.Cmd, len(calls))
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, c := range calls {
			cmds[i] = notifyScript.Eval(ctx, p, c.keys, c.argv...)
		}
		return nil
	})
	for gi, c := range cmds {
		if v, e := c.Result(); e == nil {
			done(gi, v)
		}
	}
	return err
}
