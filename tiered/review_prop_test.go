package tiered

import (
	"testing"
	"time"
)

// TestReviewVersionedInterleavingsFailSafeNegativeBatch is
// TestVersionedRandomInterleavings with FailSafeMaxStale and NegativeTTL set
// (envelopes with soft and hard expiries, negative entries from loads) and
// readers that also use GetManyOrLoad (the batch write-back path).
func TestReviewVersionedInterleavingsFailSafeNegativeBatch(t *testing.T) {
	for _, srv := range servers() {
		t.Run(srv.name, func(t *testing.T) {
			runVersionedInterleavings(t, srv, Config[string]{Namespace: "prop2", FailSafeMaxStale: time.Minute, NegativeTTL: time.Minute, TTL: 2 * time.Minute}, true)
		})
	}
}
