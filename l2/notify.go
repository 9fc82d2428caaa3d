package l2

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/wire"
)

// Notification is published atomically with a write: Body followed
// immediately by the partition's new sequence number in ASCII decimal (the
// wire contract, internal/wire). l2 does not otherwise interpret it. SeqKey
// must hash to the partition's slot on a Cluster, so the script stays
// single-slot.
type Notification = wire.Notification

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

// The write scripts, one per write shape, each framed by wire.NewScript
// (the sequence check before the write; the new sequence and the PUBLISH
// after it, unless the write returns early because it wrote nothing). Their
// own ARGV (after the frame's channel and body), per data key: setScript and
// tombScript take (value, ttl ms); casScript (value, ttl ms, expected bytes;
// "" = must be absent); vsetScript and vtombScript (value, ttl ms, version as
// 8 big-endian bytes; "" = unversioned); delScript and wire's publish-only
// script take nothing.
//
// vsetScript and vtombScript refuse a versioned write whose version is not
// above the stored one. Every other write (set, tomb, cas, an unversioned key
// of vset) goes through but keeps the stored version, inserted into the new
// envelope (inherit): Redis remembers the highest version of a key while the
// key lives, and every write over a versioned value (vtomb, and any write
// that keeps a version) lives at least as long as that value would have
// (outlive; forever if it had no expiry), so no write shortens that memory.
// Bytes that Go's decoder would reject (unknown flags, version 0) carry no
// version. A cas write-back is safe to label with the version it replaces:
// it read exactly those bytes before its loader read the database.
//
// Replies: casScript returns one 0/1 flag per key; vsetScript per key 1
// (written) or the stored version (8 bytes) that refused it, and vtombScript
// the same with 2 for a key that was absent; these publish only if they
// wrote at least one key. The others return a count (keys written, or keys
// that existed). The stored version is read from the envelope (see
// envelope.go): magic 0xC7, format 1, flags, then the soft and hard expiries
// when flagged, then the version when flag 0x20 is set (the refresh time of
// flag 0x40 and the tags of flag 0x80 follow it).
const luaEnvelope = `
local function verOffset(flags)
  local off = 4
  if flags % 8 >= 4 then off = off + 8 end
  if flags % 16 >= 8 then off = off + 8 end
  return off
end
local function uvarint(v, pos)
  local x, mul = 0, 1
  for i = pos, math.min(#v, pos + 9) do
    local b = string.byte(v, i)
    if b < 128 then return x + b * mul, i + 1 end
    x = x + (b - 128) * mul
    mul = mul * 128
  end
  return nil
end
local function tagsEnd(v, pos)
  local count
  count, pos = uvarint(v, pos)
  if count == nil or count == 0 or count > 64 then return nil end
  for _ = 1, count do
    local len
    len, pos = uvarint(v, pos)
    if len == nil then return nil end
    pos = pos + len + 8
    if pos - 1 > #v then return nil end
  end
  return pos
end
local function version(v)
  if type(v) ~= 'string' or #v < 3 or string.byte(v, 1) ~= 199 or string.byte(v, 2) ~= 1 then
    return nil
  end
  local flags = string.byte(v, 3)
  if flags % 64 < 32 then return nil end
  local off = verOffset(flags)
  local need = off + 7
  if flags % 128 >= 64 then need = need + 8 end
  if #v < need then return nil end
  if flags >= 128 and tagsEnd(v, need + 1) == nil then return nil end
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
`

// luaVersioned is the body of vsetScript and vtombScript; tomb tells them apart.
const luaVersioned = `
res = {}
local wrote = false
for i = 1, n do
  local ver = ARGV[3*i + 2]
  local have = redis.pcall('GET', KEYS[i])
  local stored = nil
  if ver ~= '' and type(have) == 'string' then stored = version(have) end
  if stored and not newer(ver, stored) then
    res[i] = stored
  else
    local val, ttl = ARGV[3*i], ARGV[3*i + 1]
    if ver == '' then
      val, ttl = keep(KEYS[i], have, val, ttl)
    elseif tomb then
      ttl = outlive(KEYS[i], ttl)
    end
    put(KEYS[i], val, ttl)
    res[i] = 1
    if tomb and have == false then res[i] = 2 end
    wrote = true
  end
end
if not wrote then return res end
`

var (
	setScript = wire.NewScript(luaEnvelope + `
for i = 1, n do put(KEYS[i], keep(KEYS[i], redis.pcall('GET', KEYS[i]), ARGV[2*i + 1], ARGV[2*i + 2])) end
res = n
`)
	tombScript = wire.NewScript(luaEnvelope + `
for i = 1, n do
  local have = redis.pcall('GET', KEYS[i])
  if have ~= false then res = res + 1 end
  put(KEYS[i], keep(KEYS[i], have, ARGV[2*i + 1], ARGV[2*i + 2]))
end
`)
	delScript = wire.NewScript(`
for i = 1, n do res = res + redis.call('UNLINK', KEYS[i]) end
`)
	casScript = wire.NewScript(luaEnvelope + `
res = {}
local wrote = false
for i = 1, n do
  local have = redis.pcall('GET', KEYS[i])
  local want = ARGV[3*i + 2]
  if type(have) == 'table' and have.err then
    res[i] = 0
  elseif (have == false and want == '') or (have ~= false and have == want) then
    put(KEYS[i], keep(KEYS[i], have, ARGV[3*i], ARGV[3*i + 1]))
    res[i] = 1
    wrote = true
  else
    res[i] = 0
  end
end
if not wrote then return res end
`)
	vsetScript  = wire.NewScript(luaEnvelope + "local tomb = false\n" + luaVersioned)
	vtombScript = wire.NewScript(luaEnvelope + "local tomb = true\n" + luaVersioned)
)

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

// runScript runs sc once per partition group of keys (one group on a
// standalone server): perKey returns sc's own ARGV for one key index, fn (nil: no
// notification) builds the group's notification, and reply receives each
// group's result. A single group uses EVALSHA (falling back to EVAL); several
// are pipelined with EVAL, so a cold script cache cannot fail half a batch.
func (s *Store) runScript(ctx context.Context, keys []string, fn NotifyFunc, sc *redis.Script,
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
		calls[gi].keys, calls[gi].argv = wire.Args(pick(all, g.idx), n, argv...)
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
		v, err := sc.Run(ctx, s.client, calls[0].keys, calls[0].argv...).Result()
		if err != nil {
			return err
		}
		done(0, v)
		return nil
	}
	cmds := make([]*redis.Cmd, len(calls))
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, c := range calls {
			cmds[i] = sc.Eval(ctx, p, c.keys, c.argv...)
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
