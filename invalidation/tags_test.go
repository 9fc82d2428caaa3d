package invalidation_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
)

// tagRecorder is a recorder that is also a TagHandler.
type tagRecorder struct {
	*recorder
	mu   sync.Mutex
	tags []string
}

func (r *tagRecorder) InvalidateTags(tags []string) {
	r.mu.Lock()
	r.tags = append(r.tags, tags...)
	r.mu.Unlock()
	r.poke()
}

func (r *tagRecorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.tags)
}

// TestTagMessages: a tag message reaches a TagHandler on every bus, its
// publisher's included; a Handler without InvalidateTags drops everything
// instead (it cannot tell which entries carry the tags).
func TestTagMessages(t *testing.T) {
	srv := redistest.StartServer(t)
	client := srv.Client()
	pubRec := &tagRecorder{recorder: newRecorder()}
	pub := startBus(t, client, invalidation.Config{Namespace: "tm"}, pubRec)
	subRec := &tagRecorder{recorder: newRecorder()}
	startBus(t, srv.Client(), invalidation.Config{Namespace: "tm"}, subRec)
	plain := newRecorder()
	startBus(t, srv.Client(), invalidation.Config{Namespace: "tm"}, plain)
	ctx := context.Background()
	if err := pub.Publish(ctx, 5, pub.EncodeTags(5, []string{"a", "b"})); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, 5*time.Second, "the tag message everywhere", func() bool {
		return slices.Equal(subRec.got(), []string{"a", "b"}) && slices.Equal(pubRec.got(), []string{"a", "b"}) && len(plain.Alls()) == 1
	})
	if c := plain.Alls(); c[0] != invalidation.CauseClear {
		t.Fatalf("a plain Handler got %v, want CauseClear", c)
	}
	if len(plain.Keys()) != 0 || len(subRec.Keys()) != 0 {
		t.Fatal("a tag message was delivered as keys")
	}
}
