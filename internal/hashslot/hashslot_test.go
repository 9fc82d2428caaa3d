package hashslot

import "testing"

func TestSlotKnownValues(t *testing.T) {
	// Values from the Redis Cluster specification and CLUSTER KEYSLOT.
	cases := []struct {
		key  string
		want int
	}{
		{"123456789", 12739},
		{"foo", 12182},
		{"bar", 5061},
		{"{user1000}.following", Slot("user1000")},
		{"foo{{bar}}zap", Slot("{bar")},
	}
	for _, c := range cases {
		if got := Slot(c.key); got != c.want {
			t.Errorf("Slot(%q) = %d, want %d", c.key, got, c.want)
		}
	}
	if Slot("foo{}{bar}") == Slot("bar") {
		t.Errorf("an empty tag must hash the whole key")
	}
}

func TestTagCoversEverySlot(t *testing.T) {
	for s := 0; s < Count; s++ {
		tag := Tag(s)
		if got := Slot("{" + tag + "}x"); got != s {
			t.Fatalf("Tag(%d) = %q maps to slot %d", s, tag, got)
		}
	}
}
