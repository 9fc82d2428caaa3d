package redisinfo

import "testing"

func TestField(t *testing.T) {
	info := "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\n\r\n# Memory\r\nused_memory:1024\r\nmaxmemory_policy:noeviction\r\nbad_line\r\n"
	cases := []struct{ name, want string }{
		{"redis_version", "7.0.15"},
		{"run_id", "abc123"},
		{"maxmemory_policy", "noeviction"},
		{"missing", ""},
		{"bad_line", ""},
	}
	for _, c := range cases {
		if got := Field(info, c.name); got != c.want {
			t.Errorf("Field(%q) = %q, want %q", c.name, got, c.want)
		}
	}
	if got := Int(info, "used_memory"); got != 1024 {
		t.Errorf("Int(used_memory) = %d, want 1024", got)
	}
	if got := Int(info, "redis_version"); got != 0 {
		t.Errorf("Int of a non-integer = %d, want 0", got)
	}
}

func TestPubSubClients(t *testing.T) {
	list := "id=3 addr=127.0.0.1:1 laddr=127.0.0.1:2 fd=8 name= age=1 idle=0 flags=P db=0 sub=2 psub=0 cmd=subscribe\n" +
		"id=4 addr=127.0.0.1:3 laddr=127.0.0.1:2 fd=9 name= age=1 idle=0 flags=N db=0 sub=0 psub=0 cmd=client|list\n" +
		"id=5 addr=127.0.0.1:4 laddr=127.0.0.1:2 fd=10 name= age=1 idle=0 flags=MP db=0 sub=1 psub=0 cmd=ping\n"
	if n := PubSubClients(list); n != 2 {
		t.Errorf("PubSubClients = %d, want 2", n)
	}
	if n := PubSubClients(""); n != 0 {
		t.Errorf("PubSubClients of an empty list = %d, want 0", n)
	}
}
