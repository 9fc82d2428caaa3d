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
